//! Checkpoint IO.

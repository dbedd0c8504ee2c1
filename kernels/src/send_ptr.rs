//! Raw pointers that rayon tasks may share, for kernels whose tasks write disjoint parts of one
//! output buffer (the callers state why in their `// SAFETY:` comments).

/// A `*mut f32` that may cross threads.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used by tasks that write disjoint elements (see each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not the field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A `*const f32` to read-only input that may cross threads.
#[derive(Clone, Copy)]
pub(crate) struct SendConstPtr(pub(crate) *const f32);
// SAFETY: the data behind it is only read while the tasks run.
unsafe impl Send for SendConstPtr {}
unsafe impl Sync for SendConstPtr {}

impl SendConstPtr {
    /// The pointer.
    pub(crate) fn get(self) -> *const f32 {
        self.0
    }
}

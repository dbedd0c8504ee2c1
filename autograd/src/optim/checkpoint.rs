//! Bit-exact training checkpoints in safetensors.

use super::{check_unique, Optimizer, Param};
use shears_tensor::{io, Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

const OPTIM_PREFIX: &str = "optim.";

/// Writes a training checkpoint to the safetensors file `path` (atomically): each parameter
/// under its name, the optimizer state under `optim.<param>.<slot>`, and the optimizer kind and
/// `step` in the `__metadata__` map. Values are written bit for bit, so [`load_state`] resumes
/// training bit-identically.
pub fn save_state(
    path: impl AsRef<Path>,
    params: &[Param],
    optimizer: &dyn Optimizer,
    step: u64,
) -> Result<()> {
    check_unique("save_state", params)?;
    let state = optimizer.state_tensors();
    let tensors = params
        .iter()
        .map(|p| (p.name().to_string(), p.tensor()))
        .chain(state.iter().map(|(k, t)| (format!("{OPTIM_PREFIX}{k}"), t)));
    let meta = BTreeMap::from([
        ("optimizer".to_string(), optimizer.kind().to_string()),
        ("step".to_string(), step.to_string()),
    ]);
    io::save(tensors, path, Some(&meta))
}

/// Loads a checkpoint written by [`save_state`] into `params` (matched by name; each must be
/// present with its shape and dtype) and `optimizer` (whose kind must match), and returns the
/// saved step.
pub fn load_state(
    path: impl AsRef<Path>,
    params: &mut [Param],
    optimizer: &mut dyn Optimizer,
) -> Result<u64> {
    let path = path.as_ref();
    let header = io::load_metadata(path)?;
    let meta = |key: &str| {
        header
            .metadata
            .get(key)
            .ok_or_else(|| Error::format(path, None, format!("metadata lacks '{key}'")))
    };
    let kind = meta("optimizer")?;
    if kind != optimizer.kind() {
        return Err(Error::format(
            path,
            None,
            format!("checkpoint holds {kind} state, not {}", optimizer.kind()),
        ));
    }
    let step = meta("step")?
        .parse::<u64>()
        .map_err(|e| Error::format(path, None, format!("bad step: {e}")))?;
    let mut tensors = io::load(path)?;
    for p in params.iter_mut() {
        let t = tensors
            .remove(p.name())
            .ok_or_else(|| Error::format(path, Some(p.name()), "parameter missing"))?;
        if t.shape() != p.tensor().shape() || t.dtype() != p.tensor().dtype() {
            return Err(Error::format(
                path,
                Some(p.name()),
                format!(
                    "saved {} {}, parameter is {} {}",
                    t.shape(),
                    t.dtype(),
                    p.tensor().shape(),
                    p.tensor().dtype()
                ),
            ));
        }
        p.set(t)?;
    }
    let state = tensors
        .into_iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(OPTIM_PREFIX)?.to_string(), t)))
        .collect();
    optimizer.load_state_tensors(&state)?;
    Ok(step)
}

//! [`Var`]: a tensor plus an optional node of the recorded graph, the no-grad scope, and
//! [`Var::backward`], which walks the graph in reverse and returns the parameters' [`Grads`].
//!
//! ```
//! use shears_autograd::{no_grad, Var};
//! use shears_tensor::{DType, Tensor};
//! let w = Var::param(Tensor::ones([2], DType::F64)?);
//! let y = no_grad(|| w.mul_scalar(3.0))?; // nothing recorded inside the scope
//! assert!(!y.requires_grad());
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::backward::{propagate, Op};
use shears_tensor::{DType, Error, Result, Shape, Tensor};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Node ids grow with creation time, and a node's inputs always exist before it, so sorting the
/// reachable nodes by decreasing id is a reverse topological order.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static NO_GRAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with graph recording switched off on this thread: every op inside returns a [`Var`]
/// without a graph node, as if all inputs were constants. Nests; restores the previous state even
/// if `f` panics.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(NO_GRAD.with(|c| c.replace(true)));
    f()
}

/// Runs `f` with graph recording switched on on this thread, whatever the enclosing scope (the
/// recomputation of a checkpointed function in the backward pass). Restores the previous state.
pub(crate) fn enable_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(NO_GRAD.with(|c| c.replace(false)));
    f()
}

/// Runs `f` with graph recording on this thread set to `enabled`, whatever the enclosing scope,
/// and restores the previous state (even if `f` panics).
///
/// Recording is a per-thread flag, so work handed to another thread must carry its mode along:
/// a rayon worker that waits inside one caller's [`no_grad`] scope may meanwhile run a job of
/// another caller that records. Code that moves a forward pass onto a pool thread captures
/// [`is_grad_enabled`] first and re-establishes it there with this function.
///
/// ```
/// use shears_autograd::{is_grad_enabled, no_grad, with_grad_enabled};
/// no_grad(|| {
///     assert!(!is_grad_enabled());
///     assert!(with_grad_enabled(true, is_grad_enabled));
///     assert!(!is_grad_enabled());
/// });
/// ```
pub fn with_grad_enabled<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    if enabled {
        enable_grad(f)
    } else {
        no_grad(f)
    }
}

/// False inside a [`no_grad`] scope on this thread.
pub fn is_grad_enabled() -> bool {
    !NO_GRAD.with(Cell::get)
}

/// The identity of a graph node (a parameter or a recorded op); keys of [`Grads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(u64);

/// One recorded value: its id and the op that made it (`Op::Leaf` for parameters).
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) op: Op,
}

impl Drop for Node {
    /// Unlinks the graph iteratively: the default recursive drop of a long chain of ops (a
    /// training loop's graph can be many thousands deep) would overflow the stack.
    fn drop(&mut self) {
        fn take_inputs(op: &mut Op, stack: &mut Vec<Arc<Node>>) {
            let op = std::mem::replace(op, Op::Leaf);
            stack.extend(op.into_inputs().into_iter().filter_map(|v| v.node));
        }
        let mut stack = Vec::new();
        take_inputs(&mut self.op, &mut stack);
        while let Some(n) = stack.pop() {
            // Only the last owner unlinks a node; shared nodes stay alive for their other users.
            if let Some(mut node) = Arc::into_inner(n) {
                take_inputs(&mut node.op, &mut stack);
            }
        }
    }
}

/// A tensor that may take part in reverse-mode differentiation.
///
/// A `Var` is a [`Tensor`] (cheap to clone) plus an optional graph node. Parameters
/// ([`Var::param`]) have a node; constants ([`Var::constant`]) do not. An op records a node only
/// when at least one input has one and recording is enabled (see [`no_grad`]), so inference on
/// constants costs one branch per op. `Var` is `Send + Sync`: the graph is immutable and shared
/// through `Arc`.
#[derive(Clone)]
pub struct Var {
    t: Tensor,
    node: Option<Arc<Node>>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Var({:?}, requires_grad: {})",
            self.t,
            self.requires_grad()
        )
    }
}

impl Var {
    /// A trainable leaf: gradients flow into it and [`Grads::get`] returns them.
    pub fn param(t: Tensor) -> Var {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Var {
            t,
            node: Some(Arc::new(Node { id, op: Op::Leaf })),
        }
    }
    /// A leaf that never receives a gradient (inputs, targets, frozen weights).
    pub fn constant(t: Tensor) -> Var {
        Var { t, node: None }
    }
    /// Wraps the result `t` of an op on `inputs`; records `op()` only when some input requires a
    /// gradient and recording is enabled.
    pub(crate) fn record(t: Tensor, inputs: &[&Var], op: impl FnOnce() -> Op) -> Var {
        if !is_grad_enabled() || !inputs.iter().any(|v| v.requires_grad()) {
            return Var::constant(t);
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Var {
            t,
            node: Some(Arc::new(Node { id, op: op() })),
        }
    }

    /// The value.
    pub fn tensor(&self) -> &Tensor {
        &self.t
    }
    /// The value, dropping the graph.
    pub fn into_tensor(self) -> Tensor {
        self.t
    }
    /// The same value as a constant: gradients do not flow through the result.
    pub fn detach(&self) -> Var {
        Var::constant(self.t.clone())
    }
    /// True for parameters and for values computed from them with recording on.
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }
    /// True when this value was produced by a recorded op (a parameter has no graph behind it).
    pub fn has_graph(&self) -> bool {
        self.node
            .as_ref()
            .is_some_and(|n| !matches!(n.op, Op::Leaf))
    }
    /// The node id, or `None` for a constant.
    pub fn id(&self) -> Option<VarId> {
        self.node.as_ref().map(|n| VarId(n.id))
    }
    /// The shape.
    pub fn shape(&self) -> &Shape {
        self.t.shape()
    }
    /// The dims.
    pub fn dims(&self) -> &[usize] {
        self.t.dims()
    }
    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.t.rank()
    }
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.t.elem_count()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.t.dtype()
    }
    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    /// The parameters (leaves with a node) this value's graph reaches, in no particular order;
    /// a parameter itself returns itself.
    pub(crate) fn leaves(&self) -> Vec<Var> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![self.clone()];
        while let Some(v) = stack.pop() {
            let Some(n) = v.node.clone() else { continue };
            if !seen.insert(n.id) {
                continue;
            }
            if matches!(n.op, Op::Leaf) {
                out.push(v);
            } else {
                n.op.for_each_input(|x| stack.push(x.clone()));
            }
        }
        out
    }

    /// Gradients of this one-element value with respect to every parameter it depends on.
    pub fn backward(&self) -> Result<Grads> {
        if self.elem_count() != 1 {
            return Err(Error::invalid(
                "backward",
                format!(
                    "needs a one-element value, got shape {} (use backward_with)",
                    self.shape()
                ),
            ));
        }
        self.backward_with(self.t.ones_like()?)
    }

    /// Reverse-mode sweep seeded with `seed` (`d loss / d self`, same shape and dtype as `self`).
    ///
    /// Visits the recorded nodes in reverse topological order; gradients of a value used several
    /// times accumulate, and each intermediate gradient is dropped as soon as it has been passed
    /// to the node's inputs, so only the frontier of the sweep is alive at any time.
    pub fn backward_with(&self, seed: Tensor) -> Result<Grads> {
        if seed.shape() != self.shape() || seed.dtype() != self.dtype() {
            return Err(Error::invalid(
                "backward_with",
                format!(
                    "seed {} {} does not match value {} {}",
                    seed.shape(),
                    seed.dtype(),
                    self.shape(),
                    self.dtype()
                ),
            ));
        }
        let mut grads = Grads::default();
        let Some(root) = &self.node else {
            return Ok(grads);
        };
        let mut nodes = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![root.clone()];
        while let Some(n) = stack.pop() {
            if !seen.insert(n.id) {
                continue;
            }
            n.op.for_each_input(|v| {
                if let Some(c) = v.node() {
                    if !seen.contains(&c.id) {
                        stack.push(c.clone());
                    }
                }
            });
            nodes.push(n);
        }
        drop(seen);
        nodes.sort_unstable_by_key(|n| std::cmp::Reverse(n.id));
        let mut pending = HashMap::from([(root.id, seed)]);
        for n in nodes {
            // A node can be unreachable by gradient only if the sweep skipped it; be lenient.
            let Some(g) = pending.remove(&n.id) else {
                continue;
            };
            if matches!(n.op, Op::Leaf) {
                grads.0.insert(VarId(n.id), g);
            } else {
                propagate(&n.op, g, &mut pending)?;
            }
        }
        Ok(grads)
    }
}

/// Adds `g` into the pending gradient of `v` (no-op for constants).
pub(crate) fn accumulate(pending: &mut HashMap<u64, Tensor>, v: &Var, g: Tensor) -> Result<()> {
    let Some(n) = v.node() else { return Ok(()) };
    debug_assert_eq!(g.dims(), v.dims(), "gradient shape for node {}", n.id);
    match pending.remove(&n.id) {
        Some(prev) => pending.insert(n.id, prev.add(&g)?),
        None => pending.insert(n.id, g),
    };
    Ok(())
}

/// The gradients of one backward sweep, one per parameter reached, keyed by [`VarId`].
#[derive(Debug, Default, Clone)]
pub struct Grads(HashMap<VarId, Tensor>);

impl Grads {
    /// `d loss / d v` (same shape as `v`), or `None` when `v` is not a parameter reached by the
    /// sweep.
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.0.get(&v.id()?)
    }
    /// Removes and returns the gradient of `v`.
    pub fn remove(&mut self, v: &Var) -> Option<Tensor> {
        self.0.remove(&v.id()?)
    }
    /// Sets the gradient of `v` (ignored for constants); optimizers and clipping use this.
    pub fn insert(&mut self, v: &Var, g: Tensor) {
        if let Some(id) = v.id() {
            self.0.insert(id, g);
        }
    }
    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The ids and gradients, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&VarId, &Tensor)> {
        self.0.iter()
    }
}

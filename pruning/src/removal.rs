//! Structural removal: whole units of a decoder layer leave the model, and the projections
//! shrink. A unit is an MLP channel `j` (row `j` of `gate_proj` and `up_proj`, column `j` of
//! `down_proj`), a query head `h` (its `head_dim` rows of `q_proj` and columns of `o_proj`) or a
//! KV head `g` (its rows of `k_proj` and `v_proj`); ALGORITHMS.md, "Bonsai", defines them.
//!
//! Removing a KV head with its query heads (a KV group, [`Removal::kv_group`]) or the same number
//! of query heads from every group keeps grouped-query attention intact; any removal that would
//! pair a kept query head with another KV head than before is refused, as is one that leaves a
//! layer without KV heads, query heads or MLP channels.
//!
//! ```
//! use shears_pruning::Removal;
//! use shears_models::config::LayerShape;
//! let shape = LayerShape { num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 8 };
//! let mut r = Removal::kv_group(&shape, 1)?; // KV head 1 with query heads 2 and 3
//! assert_eq!((r.heads.as_slice(), r.kv_heads.as_slice()), (&[2, 3][..], &[1][..]));
//! r.extend(Removal { channels: vec![5], ..Removal::default() });
//! assert!(!r.is_empty());
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use shears_models::config::LayerShape;
use shears_models::layers::Linear;
use shears_models::llama::DecoderLayer;
use shears_tensor::{Error, Result, Tensor};

/// Units to remove from one decoder layer, as indices into its shape when they were chosen.
/// Lists may repeat an index and come in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    /// Query heads: rows `h·head_dim..(h+1)·head_dim` of `q_proj`, the same columns of `o_proj`.
    pub heads: Vec<usize>,
    /// KV heads: rows `g·head_dim..(g+1)·head_dim` of `k_proj` and `v_proj`.
    pub kv_heads: Vec<usize>,
    /// MLP channels: row `j` of `gate_proj` and `up_proj`, column `j` of `down_proj`.
    pub channels: Vec<usize>,
}

impl Removal {
    /// KV head `g` of a layer shaped `shape` together with the query heads that read it.
    pub fn kv_group(shape: &LayerShape, g: usize) -> Result<Removal> {
        let (h, kvh) = (shape.num_attention_heads, shape.num_key_value_heads);
        if g >= kvh {
            return Err(Error::invalid(
                "Removal::kv_group",
                format!("KV head {g} of a layer with {kvh}"),
            ));
        }
        let group = h / kvh;
        Ok(Removal {
            heads: (g * group..(g + 1) * group).collect(),
            kv_heads: vec![g],
            channels: Vec::new(),
        })
    }

    /// True when nothing is removed.
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty() && self.kv_heads.is_empty() && self.channels.is_empty()
    }

    /// Adds `other`'s units (chosen on the same layer shape).
    pub fn extend(&mut self, other: Removal) {
        self.heads.extend(other.heads);
        self.kv_heads.extend(other.kv_heads);
        self.channels.extend(other.channels);
    }

    /// Removes the units from `layer` (`prefix` names it in errors): the affected projections
    /// become dense copies of their kept rows or columns. Checks everything before changing
    /// anything. The caller refreshes the model's recorded shapes
    /// ([`Llama::refresh_shapes`](shears_models::llama::Llama::refresh_shapes)).
    pub fn apply(&self, layer: &mut DecoderLayer, prefix: &str) -> Result<()> {
        let op = "Removal::apply";
        let shape = layer.shape();
        let hd = layer.self_attn.head_dim();
        let (h, kvh, f) = (
            shape.num_attention_heads,
            shape.num_key_value_heads,
            shape.intermediate_size,
        );
        let heads = kept(op, prefix, "query heads", &self.heads, h)?;
        let kv = kept(op, prefix, "KV heads", &self.kv_heads, kvh)?;
        let channels = kept(op, prefix, "MLP channels", &self.channels, f)?;
        // Each kept query head must keep its KV head: old group h / (h/kvh), new i / (h'/kvh').
        let (group, new_group) = (h / kvh, heads.len() / kv.len());
        let pairs_kept = heads.len().is_multiple_of(kv.len())
            && heads
                .iter()
                .enumerate()
                .all(|(i, &q)| kv[i / new_group] == q / group);
        if !pairs_kept {
            return Err(Error::invalid(
                op,
                format!(
                    "{prefix}: removing query heads {:?} and KV heads {:?} would pair a kept \
                     query head with another KV head (remove whole KV groups, or as many query \
                     heads from every group)",
                    self.heads, self.kv_heads
                ),
            ));
        }
        let span = |units: &[usize]| -> Vec<u32> {
            units
                .iter()
                .flat_map(|&u| (u * hd..(u + 1) * hd).map(|i| i as u32))
                .collect()
        };
        let a = &mut layer.self_attn;
        if heads.len() < h {
            let rows = span(&heads);
            a.q_proj = select(&a.q_proj, &rows, 0)?;
            a.o_proj = select(&a.o_proj, &rows, 1)?;
        }
        if kv.len() < kvh {
            let rows = span(&kv);
            a.k_proj = select(&a.k_proj, &rows, 0)?;
            a.v_proj = select(&a.v_proj, &rows, 0)?;
        }
        if channels.len() < f {
            let idx: Vec<u32> = channels.iter().map(|&j| j as u32).collect();
            let m = &mut layer.mlp;
            m.gate_proj = select(&m.gate_proj, &idx, 0)?;
            m.up_proj = select(&m.up_proj, &idx, 0)?;
            m.down_proj = select(&m.down_proj, &idx, 1)?;
        }
        Ok(())
    }
}

/// The units of `0..n` not in `removed`, in order; errors on an index out of range or when none
/// would be left.
fn kept(
    op: &'static str,
    prefix: &str,
    what: &str,
    removed: &[usize],
    n: usize,
) -> Result<Vec<usize>> {
    let mut gone = vec![false; n];
    for &u in removed {
        if u >= n {
            return Err(Error::invalid(
                op,
                format!("{prefix}: cannot remove {what} {u} of {n}"),
            ));
        }
        gone[u] = true;
    }
    let kept: Vec<usize> = (0..n).filter(|&u| !gone[u]).collect();
    if kept.is_empty() && n > 0 {
        return Err(Error::invalid(
            op,
            format!("{prefix}: removing all {n} {what} would leave the layer without any"),
        ));
    }
    Ok(kept)
}

/// `lin` keeping `idx` along `dim` (0: rows, 1: columns), as a dense layer in its dtype.
fn select(lin: &Linear, idx: &[u32], dim: usize) -> Result<Linear> {
    let idx = Tensor::from_slice(idx, [idx.len()])?;
    Linear::new(lin.weight_tensor().index_select(&idx, dim)?)
}

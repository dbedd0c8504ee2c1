//! The portable level of the row-streaming kernel (`wide::f32x8`).

use super::Simd;
use half::{bf16, f16};
use wide::f32x8;

pub(crate) struct Portable;
impl Simd for Portable {
    type V = f32x8;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> f32x8 {
        f32x8::ZERO
    }
    #[inline(always)]
    unsafe fn fma(a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn add(a: f32x8, b: f32x8) -> f32x8 {
        a + b
    }
    #[inline(always)]
    unsafe fn hsum(v: f32x8) -> f32 {
        v.reduce_add()
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32, valid: usize) -> f32x8 {
        let mut a = [0f32; 8];
        std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), valid);
        f32x8::from(a)
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16, valid: usize) -> f32x8 {
        let mut a = [0f32; 8];
        for (i, v) in a.iter_mut().enumerate().take(valid) {
            *v = bf16::from_bits(*p.add(i)).to_f32();
        }
        f32x8::from(a)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16, valid: usize) -> f32x8 {
        let mut a = [0f32; 8];
        for (i, v) in a.iter_mut().enumerate().take(valid) {
            *v = f16::from_bits(*p.add(i)).to_f32();
        }
        f32x8::from(a)
    }
}

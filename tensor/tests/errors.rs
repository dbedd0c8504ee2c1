//! Bad input gives a clear error naming the op and the shapes, never a panic.

use shears_tensor::{DType, Error, Tensor};

fn t(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32).unwrap()
}

#[test]
fn mismatched_matmul_names_op_and_shapes() {
    let err = t(&[2, 3]).matmul(&t(&[4, 5])).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { op: "matmul", .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("matmul") && msg.contains("[2, 3]") && msg.contains("[4, 5]"),
        "{msg}"
    );
    // Batch dims that do not broadcast.
    let err = t(&[2, 3, 4]).matmul(&t(&[3, 4, 5])).unwrap_err();
    assert!(
        matches!(err, Error::Broadcast { op: "matmul", .. }),
        "{err:?}"
    );
    // Scalars have no matrix dims.
    assert!(Tensor::scalar(1f32).matmul(&t(&[1])).is_err());
}

#[test]
fn bad_broadcast_names_both_shapes() {
    let err = t(&[2, 3]).add(&t(&[4])).unwrap_err();
    assert!(matches!(err, Error::Broadcast { op: "add", .. }), "{err:?}");
    assert!(err.to_string().contains("[2, 3]") && err.to_string().contains("[4]"));
    assert!(t(&[3]).broadcast_as([2, 4]).is_err());
    assert!(t(&[2, 3]).broadcast_as([3]).is_err());
    let mask = Tensor::zeros([2, 3], DType::U8).unwrap();
    assert!(
        t(&[3]).masked_fill(&mask, 1.0).is_err(),
        "mask may not grow the tensor"
    );
}

#[test]
fn out_of_range_dims_are_errors() {
    let x = t(&[2, 3]);
    for r in [
        x.sum(2, false),
        x.sum(-3, false),
        x.softmax(5),
        x.narrow(2, 0, 1),
        x.squeeze(7),
    ] {
        let err = r.unwrap_err();
        assert!(
            matches!(err, Error::DimOutOfRange { rank: 2, .. }),
            "{err:?}"
        );
    }
    assert!(x.transpose(0, 2).is_err());
    assert!(x.unsqueeze(3).is_err());
    assert!(x.unsqueeze(2).is_ok());
    assert!(x.permute(&[0, 0]).is_err());
    assert!(x.permute(&[1]).is_err());
}

#[test]
fn out_of_range_indices_are_errors() {
    let x = t(&[4, 3]);
    let idx = Tensor::from_vec(vec![0i64, 4], [2]).unwrap();
    let err = x.index_select(&idx, 0).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IndexOutOfRange {
                index: 4,
                size: 4,
                dim: 0,
                ..
            }
        ),
        "{err:?}"
    );
    let neg = Tensor::from_vec(vec![-1i64], [1]).unwrap();
    assert!(x.index_select(&neg, 1).is_err());
    let g = Tensor::from_vec(vec![3i64, 0, 0], [1, 3]).unwrap();
    assert!(x.gather(1, &g).is_err());
    assert!(x.scatter_add(1, &g, &t(&[1, 3])).is_err());
    assert!(x.narrow(0, 3, 2).is_err());
    assert!(x.narrow(0, usize::MAX, 2).is_err());
    let ids = Tensor::from_vec(vec![7u32], [1]).unwrap();
    assert!(x.embedding(&ids).is_err());
    assert!(x.topk(4, 1, true).is_err());
    assert!(x.kthvalue(0, 1, false).is_err());
    assert!(x.kthvalue(4, 1, false).is_err());
}

#[test]
fn wrong_dtypes_are_errors() {
    let f = t(&[2, 2]);
    let i = Tensor::zeros([2, 2], DType::I64).unwrap();
    let h = Tensor::zeros([2, 2], DType::F16).unwrap();
    assert!(matches!(
        f.add(&h).unwrap_err(),
        Error::DTypeMismatch { op: "add", .. }
    ));
    assert!(matches!(
        f.matmul(&h).unwrap_err(),
        Error::DTypeMismatch { op: "matmul", .. }
    ));
    assert!(matches!(
        i.exp().unwrap_err(),
        Error::UnsupportedDType { op: "exp", .. }
    ));
    assert!(matches!(
        i.matmul(&i).unwrap_err(),
        Error::UnsupportedDType { op: "matmul", .. }
    ));
    assert!(matches!(
        i.sum(0, false).unwrap_err(),
        Error::UnsupportedDType { .. }
    ));
    assert!(matches!(
        f.index_select(&f.flatten_all().unwrap(), 0).unwrap_err(),
        Error::UnsupportedDType { .. }
    ));
    assert!(f.where_cond(&f, &f).is_err(), "a float mask is rejected");
    assert!(f.to_vec::<f64>().is_err());
    assert!(Tensor::randn([2], 0.0, 1.0, DType::U8, 0).is_err());
}

#[test]
fn element_count_mismatches_are_errors() {
    let err = Tensor::from_vec(vec![1f32, 2., 3.], [2, 2]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ElementCount {
                expected: 4,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(t(&[2, 3]).reshape([4, 2]).is_err());
    assert!(t(&[2, 3]).reshape_infer(&[-1, 4]).is_err());
    assert_eq!(t(&[2, 3]).reshape_infer(&[-1, 2]).unwrap().dims(), &[3, 2]);
    assert!(Tensor::cat(&[&t(&[2, 3]), &t(&[2, 4])], 0).is_err());
    assert!(Tensor::cat(&[], 0).is_err());
    assert!(Tensor::stack(&[&t(&[2]), &t(&[3])], 0).is_err());
    assert!(t(&[5]).split_sizes(&[2, 2], 0).is_err());
    assert!(t(&[5]).split(0, 0).is_err());
}

#[test]
fn empty_reductions() {
    let e = t(&[0, 3]);
    assert_eq!(
        e.sum(0, false).unwrap().to_vec::<f32>().unwrap(),
        vec![0.0; 3]
    );
    assert!(e
        .mean(0, false)
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_nan()));
    assert!(
        e.max(0, false).is_err(),
        "max over an empty dim has no value"
    );
    assert_eq!(e.max(1, false).unwrap().dims(), &[0]);
    assert!(e.argmax(0, false).is_err());
}

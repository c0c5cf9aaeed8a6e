//! Alone in its own test binary: MLX's active-memory counter is process-wide, so no other
//! test may allocate while this one measures.

use mlx_engine::mlx::{ops, transforms, Array};

#[test]
fn hundred_thousand_arrays_leave_memory_where_it_was() {
    let warm = Array::from_slice(&[0.0f32; 256], &[256]).unwrap();
    warm.eval().unwrap();
    transforms::clear_cache().unwrap();
    let before = transforms::memory_stats().unwrap().active;
    for i in 0..100_000 {
        let a = Array::from_slice(&[i as f32; 16], &[16]).unwrap();
        let b = ops::add(&a, &a).unwrap();
        if i % 10_000 == 0 {
            b.eval().unwrap();
        }
    }
    transforms::clear_cache().unwrap();
    let after = transforms::memory_stats().unwrap().active;
    assert_eq!(
        before, after,
        "active memory before {before}, after {after}"
    );
}

//! Our C++ kernels (`kernels/`), exposed as MLX custom primitives.

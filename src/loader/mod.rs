//! Model-file loaders: GGUF ([`gguf`]) and safetensors ([`safetensors`]), both read in place
//! from a read-only memory map ([`mmap`]). Every loader validates offsets and sizes against
//! the file before slicing the map, and every error names the file.

pub mod gguf;
#[allow(unsafe_code)]
pub mod mmap;
pub mod safetensors;

pub use gguf::{GgufFile, MetaValue, TensorInfo};
pub use mmap::MappedFile;
pub use safetensors::{SafeTensor, SafetensorsModel};

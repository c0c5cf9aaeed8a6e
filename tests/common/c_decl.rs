//! C declarations in a comparable spelling, and Rust FFI types spelled as C: what the tests
//! that check a C header against its Rust declarations share.

/// `const float *` → `const float*`, `float x [N]` → `float x[N]`; collapses spaces.
pub fn normalize_c_type(t: &str) -> String {
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    t.replace(" *", "*").replace(" [", "[")
}

/// A Rust FFI type in C spelling: `*const u32` → `const uint32_t*`.
pub fn rust_type_to_c(t: &str) -> String {
    let t = t.trim();
    if let Some(inner) = t.strip_prefix("*const ") {
        let inner = rust_type_to_c(inner);
        return if inner.ends_with('*') {
            format!("{inner}*")
        } else {
            format!("const {inner}*")
        };
    }
    if let Some(inner) = t.strip_prefix("*mut ") {
        return format!("{}*", rust_type_to_c(inner));
    }
    if let Some(array) = t.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        let (elem, len) = array.split_once(';').unwrap();
        return format!("{}[{}]", rust_type_to_c(elem), len.trim());
    }
    let c = match t {
        "c_int" => "int",
        "c_char" => "char",
        "c_void" => "void",
        "usize" => "size_t",
        "u64" => "uint64_t",
        "u32" => "uint32_t",
        "i32" => "int32_t",
        "i64" => "int64_t",
        "u8" => "uint8_t",
        "f32" => "float",
        other => other,
    };
    c.to_string()
}

/// Removes `/* */` and `//` comments.
pub fn strip_c_comments(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .split_once("*/")
            .map_or("", |(_, after)| after);
    }
    out.push_str(rest);
    out.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits `type name` (or `type name[N]`) into (name, C type).
pub fn split_c_decl(decl: &str) -> (String, String) {
    let decl = normalize_c_type(decl);
    let (decl, array) = match decl.split_once('[') {
        Some((d, a)) => (d.to_string(), format!("[{}", a)),
        None => (decl, String::new()),
    };
    let at = decl
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    (
        decl[at..].to_string(),
        normalize_c_type(&format!("{}{array}", &decl[..at])),
    )
}

/// A header without comments, split into its `#define NAME VALUE` constants whose names start
/// with `prefix` and the declarations left (other preprocessor lines and the `extern "C"`
/// braces dropped).
pub fn split_header(src: &str, prefix: &str) -> (Vec<(String, String)>, String) {
    let src = strip_c_comments(src);
    let mut defines = Vec::new();
    let mut body = String::new();
    for line in src.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["#define", name, value] if name.starts_with(prefix) => {
                defines.push((name.to_string(), value.to_string()));
            }
            [first, ..] if first.starts_with('#') => {}
            ["extern", "\"C\"", "{"] | ["}"] => {}
            _ => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    (defines, body)
}

/// The `name: Type` pairs of a comma-separated Rust list, types in C spelling.
pub fn rust_fields(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter(|f| f.contains(':'))
        .map(|f| {
            let (name, ty) = f.split_once(':').unwrap();
            (
                name.trim().trim_start_matches("pub ").to_string(),
                rust_type_to_c(ty),
            )
        })
        .collect()
}

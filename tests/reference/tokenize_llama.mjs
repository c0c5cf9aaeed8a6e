#!/usr/bin/env node
// Reference token ids for the Llama 1/2 SentencePiece vocabulary (TinyLlama's), from the npm
// package llama-tokenizer-js, an implementation independent of ours.
//
// usage: node tokenize_llama.mjs PACKAGE_DIR STRINGS.json OUT.json
//
// PACKAGE_DIR is the installed node_modules/llama-tokenizer-js. OUT.json gets:
//   pieces         the 32,000 pieces, by id
//   merges         "left right" merge rules, highest priority first
//   ids            per string: no BOS, with the leading-space prefix
//   package_tests  the package's own encode test cases, {text, ids}
//   package_decode its own decode test cases with standard flags, {ids, text}
//
// The package knows nothing of control tokens; like llama.cpp and Hugging Face, we match
// <unk>, <s> and </s> whole in the text and give each stretch of text between them its own
// leading space, so this script splits the text on them the same way before encoding.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const CONTROL = new Map([["<unk>", 0], ["<s>", 1], ["</s>", 2]]);

/** Splits `text` into stretches of text and control tokens, leftmost-longest. */
function splitControl(text) {
  const parts = [];
  let start = 0;
  let i = 0;
  while (i < text.length) {
    const hit = [...CONTROL.keys()]
      .filter((t) => text.startsWith(t, i))
      .sort((a, b) => b.length - a.length)[0];
    if (hit === undefined) {
      i += 1;
      continue;
    }
    if (i > start) parts.push({ text: text.slice(start, i) });
    parts.push({ id: CONTROL.get(hit) });
    i += hit.length;
    start = i;
  }
  if (start < text.length) parts.push({ text: text.slice(start) });
  return parts;
}

/** Ids of `text` without BOS. */
function encode(tokenizer, text) {
  return splitControl(text).flatMap((p) =>
    p.text === undefined ? [p.id] : tokenizer.encode(p.text, false, true)
  );
}

/** The package's own test cases, recorded by running them against a recording proxy. */
function packageTests(tokenizer) {
  const encodes = [];
  const decodes = [];
  const proxy = {
    encode(text, bos, space, log) {
      const ids = tokenizer.encode(text, bos, space, log);
      if (bos && space) encodes.push({ text, ids });
      return ids;
    },
    decode(ids, bos = true, space = true) {
      const text = tokenizer.decode(ids, bos, space);
      if (bos && space) decodes.push({ ids, text });
      return text;
    },
  };
  const log = console.log;
  console.log = () => {};
  try {
    tokenizer.defaultTests(proxy);
  } finally {
    console.log = log;
  }
  return { encodes, decodes };
}

/** The merge rules, by priority, as "left right". */
function mergeRules(tokenizer) {
  return [...tokenizer.merges.entries()].sort((a, b) => a[1] - b[1]).map(([rule]) => rule);
}

async function main() {
  const [pkgDir, stringsPath, outPath] = process.argv.slice(2);
  if (!outPath) {
    console.error("usage: node tokenize_llama.mjs PACKAGE_DIR STRINGS.json OUT.json");
    process.exit(2);
  }
  const url = pathToFileURL(join(pkgDir, "llama-tokenizer.js")).href;
  const tokenizer = (await import(url)).default;
  const strings = JSON.parse(readFileSync(stringsPath, "utf8"));
  const tests = packageTests(tokenizer);
  const out = {
    pieces: tokenizer.vocabById,
    merges: mergeRules(tokenizer),
    ids: strings.map((s) => encode(tokenizer, s)),
    package_tests: tests.encodes,
    package_decode: tests.decodes,
  };
  writeFileSync(outPath, JSON.stringify(out));
  console.log(`tokenized ${strings.length} strings`);
}

await main();

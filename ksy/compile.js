#!/usr/bin/env node
// Compile every ksy/*.ksy with kaitai-struct-compiler (npm, 0.11.0) through its JS API,
// and write each parsed descriptor as JSON to build/json/<id>.json.
//
//   node compile.js [--target python] [--out build/python] [--debug]
//
// Fails loudly (message on stderr, exit code 1) when a compilation is rejected, when the
// compiler never settles its promise (a known crash mode of the Scala.js build, which
// otherwise exits 0 with no output), or when an expected output file is missing or empty.
'use strict';
const fs = require('fs');
const path = require('path');

function die(msg) {
  process.stderr.write(`compile.js: error: ${msg}\n`);
  process.exit(1);
}

let yaml, ksc;
try {
  yaml = require('js-yaml');
  ksc = require('kaitai-struct-compiler');
} catch (e) {
  die(`node packages missing (run "npm ci" in ksy/): ${e.message}`);
}

const HERE = __dirname;
const args = process.argv.slice(2);
function opt(name, dflt) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
}
const target = opt('--target', 'python');
const outDir = path.resolve(opt('--out', path.join(HERE, 'build', target)));
const debug = args.includes('--debug');

// Targets whose backend in kaitai-struct-compiler 0.11 cannot generate some `valid` checks.
// Nim rejects `valid: expr:` ("Boxed Exception"); Perl generates no check of any kind (empty
// blocks) and, for a `valid` on a `repeat: eos` field, code that uses an undeclared `$i`. For
// them those checks are left out, and the build says how many: such a parser reads valid
// images the same way but does not reject what the checks reject.
const NO_VALID = { nim: 'expr', perl: 'all' };
const droppedChecks = {};   // descriptor id -> checks left out
function withoutValidExpr(node, counter) {
  if (Array.isArray(node)) return node.map((v) => withoutValidExpr(v, counter));
  if (!node || typeof node !== 'object') return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === 'valid' && (NO_VALID[target] === 'all' || (v && typeof v === 'object' && 'expr' in v))) {
      counter.n += 1;
      continue;
    }
    out[k] = withoutValidExpr(v, counter);
  }
  return out;
}
function forTarget(doc) {
  if (!NO_VALID[target]) return doc;
  const counter = { n: 0 };
  const out = withoutValidExpr(doc, counter);
  droppedChecks[doc.meta.id] = counter.n;
  return out;
}

// The compiler's JS API has no --go-package (the CLI's): its Go files start with `import`,
// which Go rejects. All descriptors go into one package, `nvbox`, after the generated-code
// comment (which must stay first for Go tools to see the file as generated).
const GO_PACKAGE = 'nvbox';
function withGoPackage(src) {
  if (/^package /m.test(src)) return src;
  const nl = src.startsWith('//') ? src.indexOf('\n') + 1 : 0;
  return `${src.slice(0, nl)}\npackage ${GO_PACKAGE}\n\n${src.slice(nl)}`;
}

if (ksc.version !== '0.11.0') die(`expected kaitai-struct-compiler 0.11.0, found ${ksc.version}`);
if (!ksc.languages.includes(target)) die(`unknown target ${target}; one of ${ksc.languages.join(', ')}`);

const specs = fs.readdirSync(HERE).filter((f) => f.endsWith('.ksy')).sort();
if (specs.length === 0) die(`no .ksy files in ${HERE}`);

function load(file) {
  try {
    return yaml.load(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    die(`${path.basename(file)}: YAML error: ${e.message}`);
  }
}

const importer = {
  importYaml(name, mode) {
    // Relative imports arrive joined with the importing file's directory (not normalized);
    // absolute ones (leading "/") are looked up from ksy/ as well: there is no library path.
    const p = path.normalize(path.join(HERE, name + '.ksy'));
    if (!fs.existsSync(p)) return Promise.reject(new Error(`import not found: ${name} (${mode})`));
    return Promise.resolve(forTarget(load(p)));
  },
};

// nvbox_der, NvboxDer and nvboxder name the same descriptor.
function sameName(a, b) {
  return a.replace(/_/g, '').toLowerCase() === b.replace(/_/g, '').toLowerCase();
}

function withTimeout(promise, ms, what) {
  let t;
  const timer = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what}: compiler did not finish within ${ms} ms (crashed?)`)), ms);
  });
  return Promise.race([promise, timer]).finally(() => clearTimeout(t));
}

async function main() {
  fs.mkdirSync(outDir, { recursive: true });
  const expected = [];
  for (const spec of specs) {
    const doc = load(path.join(HERE, spec));
    const id = doc && doc.meta && doc.meta.id;
    if (id !== path.basename(spec, '.ksy')) die(`${spec}: meta/id "${id}" does not match the file name`);
    let files;
    try {
      files = await withTimeout(ksc.compile(target, forTarget(doc), importer, debug), 120000, spec);
    } catch (e) {
      die(`${spec}: ${String(e && e.message ? e.message : e)}`);
    }
    if (!files || Object.keys(files).length === 0) die(`${spec}: the compiler produced no files`);
    for (const [fn, src] of Object.entries(files)) {
      if (!src) die(`${spec}: the compiler produced an empty ${fn}`);
      fs.mkdirSync(path.dirname(path.join(outDir, fn)), { recursive: true });
      fs.writeFileSync(path.join(outDir, fn), target === 'go' ? withGoPackage(src) : src);
    }
    // Each target names its files its own way (nvbox.py, Nvbox.js, Nvbox.java, nvbox.h and
    // nvbox.cpp, src/nvbox.rs...): one of them must be named after the descriptor's id.
    const main = Object.keys(files).find((fn) => sameName(path.basename(fn).replace(/\.[^.]*$/, ''), id));
    if (!main) die(`${spec}: no output file named after ${id} among ${Object.keys(files).join(', ')}`);
    expected.push(path.join(outDir, main));
    // The parsed descriptor as JSON, for tools without a YAML parser (ksy/tests).
    const jsonDir = path.join(HERE, 'build', 'json');
    fs.mkdirSync(jsonDir, { recursive: true });
    fs.writeFileSync(path.join(jsonDir, id + '.json'), JSON.stringify(doc, null, 1));
  }
  for (const f of expected) {
    if (!fs.existsSync(f) || fs.statSync(f).size === 0) die(`expected output missing or empty: ${f}`);
  }
  for (const [id, n] of Object.entries(droppedChecks)) {
    process.stderr.write(`compile.js: warning: ${target}: ${n} \`valid\` checks of ${id} left out (this backend `
      + 'cannot generate them): the parser does not reject what they reject\n');
  }
  process.stdout.write(`compiled ${specs.length} descriptor(s) to ${target} in ${path.relative(process.cwd(), outDir) || '.'}\n`);
}

process.on('exit', (code) => {
  // Guard against a compiler crash that leaves the promise pending and node exiting 0.
  if (code === 0 && !main.done) {
    process.stderr.write('compile.js: error: exited before compilation finished (compiler crash?)\n');
    process.exitCode = 1;
  }
});
main().then(() => { main.done = true; }, (e) => die(String(e)));

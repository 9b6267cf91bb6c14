#!/usr/bin/env node
// The walk of tests/summary.py over the generated JavaScript parser (build/javascript),
// with the npm kaitai-struct runtime:
//
//   node walk.js BUILD_DIR < paths.txt      (one image path a line)
//
// prints one JSON object {path: outcome} with the same outcome as summary.outcome(): the
// summary of everything read, or {"error": kind, "path": srcPath} / {"error": "eof"} /
// {"error": "utf8"}. Two adjustments of the runtime, both to report what the generated code
// does, not to change it: the validation errors keep the srcPath the generated code passes
// (the runtime's constructors drop it), and strings decode with a fatal UTF-8 decoder, as
// Python's bytes.decode does (TextDecoder replaces bad bytes by default).
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const KaitaiStream = require('kaitai-struct/KaitaiStream');

for (const name of Object.keys(KaitaiStream).filter((n) => /^Validation\w+Error$/.test(n))) {
  const Original = KaitaiStream[name];
  KaitaiStream[name] = function KeepSrcPath(...args) {
    const e = new Original(...args);
    e.srcPath = args[args.length - 1];
    return e;
  };
}

class Utf8Error extends Error {}
KaitaiStream.bytesToStr = function bytesToStr(arr, encoding) {
  try {
    return new TextDecoder(encoding, { fatal: true }).decode(arr);
  } catch (e) {
    throw new Utf8Error(String(e));
  }
};

const { Nvbox } = require(path.resolve(process.argv[2], 'Nvbox.js'));

function sha(bytes) {
  return crypto.createHash('sha256').update(bytes).digest('hex').slice(0, 16);
}

function walkMap(node, level, fanout, first, out) {
  const span = fanout ** (level - 1);
  node.entries.forEach((e, i) => {
    if (e.pointer.offset === 0) return;
    if (level === 1) out.push([first + i, sha(e.child.data)]);
    else walkMap(e.child, level - 1, fanout, first + i * span, out);
  });
}

function clusterMap(cm, fanout) {
  const out = [];
  if (cm.rootPointer.pointer.offset !== 0) {
    if (cm.depth.value === 0) out.push([0, sha(cm.rootNode.data)]);
    else walkMap(cm.rootNode, cm.depth.value, fanout, 0, out);
  }
  return out;
}

function entry(e, fanout) {
  const b = e.body;
  const c = b.content;
  const d = { name: b.name.value, size: b.size.value, ext: b.extensions.length };
  if (c.tag === 0x80) d.inline = sha(c.inlineData);
  else {
    d.depth = c.clusters.depth.value;
    d.clusters = clusterMap(c.clusters, fanout);
  }
  return d;
}

function directory(node, fanout, out) {
  if (node.level === 0) for (const e of node.body.entries) out.push(entry(e, fanout));
  else for (const br of node.body.branches) directory(br.childNode, fanout, out);
}

function refcounts(node, level, fanout, half, first, out) {
  if (level === 1) {
    node.counts.forEach((n, j) => { if (n) out[String(first + j)] = n; });
    return;
  }
  const span = half * fanout ** (level - 2);
  node.entries.forEach((e, i) => {
    if (e.pointer.offset !== 0) refcounts(e.child, level - 1, fanout, half, first + i * span, out);
  });
}

function summarize(img) {
  const s = img.activeSlot;
  const h = img.header;
  const out = {
    cluster_bits: h.clusterBits,
    capacity: h.capacityClusters,
    extensions: h.extensions.map((x) => [x.extType, x.extLength]),
    creator: h.extensions.filter((x) => x.extType === 1).map((x) => x.creatorName),
    slot: img.activeSlotIndex,
    generation: s.generation,
    image_clusters: s.imageClusters,
    blob_count: s.blobCount,
    encrypted: Boolean(img.isEncrypted),
  };
  const fanout = Math.floor(img.clusterSize / img.pointerWidth);
  if (img.isEncrypted) {
    out.key_slots = img.keyslotTable.slots.map((k) => k.kind);
    return out;
  }
  const counts = {};
  refcounts(img.refcountRootNode, s.refcountDepth, fanout, img.clusterSize / 2, 0, counts);
  out.refcounts = counts;
  const blobs = [];
  if (img.dirRootNode != null) directory(img.dirRootNode, fanout, blobs);
  out.blobs = blobs;
  if (s.snaptableDepth !== 0) {
    const table = [];
    walkMap(img.snaptableRootNode, s.snaptableDepth, fanout, 0, table);
    out.snapshot_table_clusters = table;
  }
  if (img.snapshotTable != null) {
    out.snapshots = img.snapshotTable.snapshots.map((sn) => {
      const b = sn.body;
      const tree = [];
      if (b.dirRootNode != null) directory(b.dirRootNode, fanout, tree);
      return {
        id: b.id.value, name: b.name.value, blob_count: b.blobCount.value,
        metadata: b.metadata != null ? sha(b.metadata.value) : null, blobs: tree,
      };
    });
  }
  return out;
}

function outcome(file) {
  const buf = fs.readFileSync(file);
  const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  try {
    return summarize(new Nvbox(new KaitaiStream(ab, 0)));
  } catch (e) {
    if (e.srcPath !== undefined && /^Validation\w+Error$/.test(e.name)) return { error: e.name, path: e.srcPath };
    if (e instanceof KaitaiStream.EOFError) return { error: 'eof' };
    if (e instanceof Utf8Error) return { error: 'utf8' };
    throw e;
  }
}

const paths = fs.readFileSync(0, 'utf8').split('\n').filter(Boolean);
const result = {};
for (const p of paths) result[p] = outcome(p);
process.stdout.write(JSON.stringify(result));

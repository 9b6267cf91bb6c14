<?php
// The walk of tests/summary.py and tests/walk.js over the generated PHP parser:
//
//   php walk.php RUNTIME_LIB BUILD_DIR < paths.txt
//
// prints one JSON object {path: outcome}. test_targets.py runs it when KAITAI_PHP_RUNTIME
// names a checkout of the Kaitai PHP runtime (0.11). The runtime decodes strings with iconv,
// which reports bad UTF-8 as a notice; the walk turns notices into exceptions to see it.

[$_, $runtimeLib, $build] = $argv;
spl_autoload_register(function ($class) use ($runtimeLib) {
    $file = $runtimeLib . '/' . str_replace('\\', '/', $class) . '.php';
    if (is_file($file)) require_once $file;
});
require_once $build . '/NvboxDer.php';
require_once $build . '/Nvbox.php';

class BadUtf8 extends Exception {}
set_error_handler(function ($no, $msg) {
    if (strpos($msg, 'iconv') !== false) throw new BadUtf8($msg);
    return false;
});

function sha($data) { return substr(hash('sha256', $data), 0, 16); }

function walkMap($node, $level, $fanout, $first, &$out) {
    $span = $fanout ** ($level - 1);
    foreach ($node->entries() as $i => $e) {
        if ($e->pointer()->offset() == 0) continue;
        if ($level == 1) $out[] = [$first + $i, sha($e->child()->data())];
        else walkMap($e->child(), $level - 1, $fanout, $first + $i * $span, $out);
    }
}

function clusterMap($cm, $fanout) {
    $out = [];
    if ($cm->rootPointer()->pointer()->offset() != 0) {
        if ($cm->depth()->value() == 0) $out[] = [0, sha($cm->rootNode()->data())];
        else walkMap($cm->rootNode(), $cm->depth()->value(), $fanout, 0, $out);
    }
    return $out;
}

function directory($node, $fanout, &$out) {
    if ($node->level() == 0) {
        foreach ($node->body()->entries() as $e) {
            $b = $e->body();
            $c = $b->content();
            $d = ['name' => $b->name()->value(), 'size' => $b->size()->value(), 'ext' => count($b->extensions())];
            if ($c->tag() == 0x80) $d['inline'] = sha($c->inlineData());
            else {
                $d['depth'] = $c->clusters()->depth()->value();
                $d['clusters'] = clusterMap($c->clusters(), $fanout);
            }
            $out[] = $d;
        }
    } else {
        foreach ($node->body()->branches() as $br) directory($br->childNode(), $fanout, $out);
    }
}

function refcounts($node, $level, $fanout, $half, $first, &$out) {
    if ($level == 1) {
        foreach ($node->counts() as $j => $n) if ($n) $out[(string) ($first + $j)] = $n;
        return;
    }
    $span = $half * $fanout ** ($level - 2);
    foreach ($node->entries() as $i => $e)
        if ($e->pointer()->offset() != 0) refcounts($e->child(), $level - 1, $fanout, $half, $first + $i * $span, $out);
}

function summarize($img) {
    $s = $img->activeSlot();
    $h = $img->header();
    $exts = [];
    $creators = [];
    foreach ($h->extensions() as $x) {
        $exts[] = [$x->extType(), $x->extLength()];
        if ($x->extType() == 1) $creators[] = $x->creatorName();
    }
    $out = ['cluster_bits' => $h->clusterBits(), 'capacity' => $h->capacityClusters(), 'extensions' => $exts,
            'creator' => $creators, 'slot' => $img->activeSlotIndex(), 'generation' => $s->generation(),
            'image_clusters' => $s->imageClusters(), 'blob_count' => $s->blobCount(),
            'encrypted' => (bool) $img->isEncrypted()];
    $fanout = intdiv($img->clusterSize(), $img->pointerWidth());
    if ($img->isEncrypted()) {
        $out['key_slots'] = array_map(fn($k) => $k->kind(), $img->keyslotTable()->slots());
        return $out;
    }
    $counts = [];
    refcounts($img->refcountRootNode(), $s->refcountDepth(), $fanout, intdiv($img->clusterSize(), 2), 0, $counts);
    $out['refcounts'] = (object) $counts;
    $blobs = [];
    if ($img->dirRootNode() !== null) directory($img->dirRootNode(), $fanout, $blobs);
    $out['blobs'] = $blobs;
    if ($s->snaptableDepth() != 0) {
        $table = [];
        walkMap($img->snaptableRootNode(), $s->snaptableDepth(), $fanout, 0, $table);
        $out['snapshot_table_clusters'] = $table;
    }
    if ($img->snapshotTable() !== null) {
        $snaps = [];
        foreach ($img->snapshotTable()->snapshots() as $sn) {
            $b = $sn->body();
            $tree = [];
            if ($b->dirRootNode() !== null) directory($b->dirRootNode(), $fanout, $tree);
            $snaps[] = ['id' => $b->id()->value(), 'name' => $b->name()->value(), 'blob_count' => $b->blobCount()->value(),
                        'metadata' => $b->metadata() === null ? null : sha($b->metadata()->value()), 'blobs' => $tree];
        }
        $out['snapshots'] = $snaps;
    }
    return $out;
}

function outcome($path) {
    try {
        return summarize(new Nvbox(new \Kaitai\Struct\Stream(file_get_contents($path))));
    } catch (\Kaitai\Struct\Error\ValidationFailedError $e) {
        // the message starts with the srcPath (a protected field)
        $cls = explode('\\', get_class($e));
        return ['error' => end($cls), 'path' => substr($e->getMessage(), 0, strpos($e->getMessage(), ': '))];
    } catch (\Kaitai\Struct\Error\EndOfStreamError $e) {
        return ['error' => 'eof'];
    } catch (\Kaitai\Struct\Error\KaitaiError $e) {
        // a seek past the end is a KaitaiError of its own in this runtime
        if (strpos($e->getMessage(), 'must be less than the size') === false) throw $e;
        return ['error' => 'eof'];
    } catch (BadUtf8 $e) {
        return ['error' => 'utf8'];
    }
}

$result = [];
while (($line = fgets(STDIN)) !== false) {
    $line = rtrim($line, "\n");
    if ($line !== '') $result[$line] = outcome($line);
}
echo json_encode((object) $result, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);

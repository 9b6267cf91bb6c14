// The walk of tests/summary.py and tests/walk.js over the generated Go parser:
//
//	GOPATH=<dir with src/nvbox = build/go and the runtime>:/usr/share/gocode go run walk.go < paths.txt
//
// prints one JSON object {path: outcome}. test_targets.py runs it when KAITAI_GO_RUNTIME
// names a checkout of the Kaitai Go runtime (0.11). The generated code converts names with
// string(bytes), which does not check UTF-8, so the walk does, on each name it reads (as
// Python's decoder does on parsing). Every instance returns (value, error); `must` turns
// an error into a panic that outcome() recovers, so the walk reads like the Python one.
// Cluster indexes are big integers: a damaged tree may claim more levels than int64 spans.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/kaitai-io/kaitai_struct_go_runtime/kaitai"
	"nvbox"
)

type failure struct{ err error }

type badUTF8 struct{}

func must[T any](v T, err error) T {
	if err != nil {
		panic(failure{err})
	}
	return v
}

func text(s string) string {
	if !utf8.ValidString(s) {
		panic(badUTF8{})
	}
	return s
}

func sha(data []byte) string {
	d := sha256.Sum256(data)
	return hex.EncodeToString(d[:])[:16]
}

type obj = map[string]interface{}

func num(n *big.Int) json.Number { return json.Number(n.String()) }

func pow(base, exp int64) *big.Int {
	return new(big.Int).Exp(big.NewInt(base), big.NewInt(exp), nil)
}

// at returns first + i * span.
func at(first *big.Int, i int, span *big.Int) *big.Int {
	return new(big.Int).Add(first, new(big.Int).Mul(big.NewInt(int64(i)), span))
}

func walkMap(node *nvbox.Nvbox_MapNode, level uint64, fanout int64, first *big.Int, out *[]interface{}) {
	span := pow(fanout, int64(level)-1)
	for i, e := range node.Entries {
		if e.Pointer.Offset == 0 {
			continue
		}
		child := must(e.Child())
		if level == 1 {
			*out = append(*out, []interface{}{num(at(first, i, big.NewInt(1))), sha(child.Data)})
		} else {
			walkMap(child, level-1, fanout, at(first, i, span), out)
		}
	}
}

func clusterMap(cm *nvbox.Nvbox_ClusterMap, fanout int64) []interface{} {
	out := []interface{}{}
	if cm.RootPointer.Pointer.Offset != 0 {
		depth := must(cm.Depth.Value())
		root := must(cm.RootNode())
		if depth == 0 {
			out = append(out, []interface{}{0, sha(root.Data)})
		} else {
			walkMap(root, depth, fanout, big.NewInt(0), &out)
		}
	}
	return out
}

func entry(e *nvbox.Nvbox_DirEntry, fanout int64) obj {
	b := e.Body
	c := b.Content
	d := obj{"name": text(b.Name.Value), "size": must(b.Size.Value()), "ext": len(b.Extensions)}
	if c.Tag == 0x80 {
		d["inline"] = sha(c.InlineData)
	} else {
		d["depth"] = must(c.Clusters.Depth.Value())
		d["clusters"] = clusterMap(c.Clusters, fanout)
	}
	return d
}

func directory(node *nvbox.Nvbox_DirNode, fanout int64, out *[]interface{}) {
	if node.Level == 0 {
		for _, e := range node.Body.Entries {
			*out = append(*out, entry(e, fanout))
		}
		return
	}
	for _, br := range node.Body.Branches {
		directory(must(br.ChildNode()), fanout, out)
	}
}

func refcounts(node *nvbox.Nvbox_RefcountNode, level uint8, fanout, half int64, first *big.Int, out obj) {
	if level == 1 {
		for j, n := range node.Counts {
			if n != 0 {
				out[at(first, j, big.NewInt(1)).String()] = n
			}
		}
		return
	}
	span := new(big.Int).Mul(big.NewInt(half), pow(fanout, int64(level)-2))
	for i, e := range node.Entries {
		if e.Pointer.Offset != 0 {
			refcounts(must(e.Child()), level-1, fanout, half, at(first, i, span), out)
		}
	}
}

func summarize(img *nvbox.Nvbox) obj {
	s := must(img.ActiveSlot())
	h := img.Header
	exts := []interface{}{}
	creators := []interface{}{}
	for _, x := range h.Extensions {
		exts = append(exts, []interface{}{x.ExtType, x.ExtLength})
	}
	for _, x := range h.Extensions {
		if x.ExtType == 1 {
			creators = append(creators, text(must(x.CreatorName())))
		}
	}
	encrypted := must(img.IsEncrypted())
	out := obj{
		"cluster_bits": h.ClusterBits, "capacity": h.CapacityClusters,
		"extensions": exts, "creator": creators,
		"slot": must(img.ActiveSlotIndex()), "generation": s.Generation,
		"image_clusters": s.ImageClusters, "blob_count": s.BlobCount,
		"encrypted": encrypted,
	}
	clusterSize := int64(must(img.ClusterSize()))
	fanout := clusterSize / int64(must(img.PointerWidth()))
	if encrypted {
		kinds := []interface{}{}
		for _, k := range must(img.KeyslotTable()).Slots {
			kinds = append(kinds, int(k.Kind))
		}
		out["key_slots"] = kinds
		return out
	}
	counts := obj{}
	refcounts(must(img.RefcountRootNode()), s.RefcountDepth, fanout, clusterSize/2, big.NewInt(0), counts)
	out["refcounts"] = counts
	blobs := []interface{}{}
	if root := must(img.DirRootNode()); root != nil {
		directory(root, fanout, &blobs)
	}
	out["blobs"] = blobs
	if s.SnaptableDepth != 0 {
		table := []interface{}{}
		walkMap(must(img.SnaptableRootNode()), uint64(s.SnaptableDepth), fanout, big.NewInt(0), &table)
		out["snapshot_table_clusters"] = table
	}
	if st := must(img.SnapshotTable()); st != nil {
		snaps := []interface{}{}
		for _, sn := range st.Snapshots {
			b := sn.Body
			d := obj{"id": must(b.Id.Value()), "name": text(b.Name.Value),
				"blob_count": must(b.BlobCount.Value()), "metadata": nil}
			if b.Metadata != nil {
				d["metadata"] = sha(b.Metadata.Value)
			}
			tree := []interface{}{}
			if root := must(b.DirRootNode()); root != nil {
				directory(root, fanout, &tree)
			}
			d["blobs"] = tree
			snaps = append(snaps, d)
		}
		out["snapshots"] = snaps
	}
	return out
}

// classify maps a parse error to summary.py's outcome; other errors stop the walk.
func classify(err error) obj {
	var invalid kaitai.ValidationFailedError
	if errors.As(err, &invalid) {
		kind := fmt.Sprintf("%T", invalid)
		return obj{"error": kind[strings.LastIndex(kind, ".")+1:], "path": invalid.SrcPath()}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &kaitai.EndOfStreamError{}) {
		return obj{"error": "eof"}
	}
	panic(err)
}

func outcome(path string) (result obj) {
	defer func() {
		switch r := recover().(type) {
		case nil:
		case failure:
			result = classify(r.err)
		case badUTF8:
			result = obj{"error": "utf8"}
		default:
			panic(r)
		}
	}()
	data, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	img := nvbox.NewNvbox()
	if err := img.Read(kaitai.NewStream(strings.NewReader(string(data))), nil, img); err != nil {
		return classify(err)
	}
	return summarize(img)
}

func main() {
	result := obj{}
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		if line := lines.Text(); line != "" {
			result[line] = outcome(line)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		panic(err)
	}
}

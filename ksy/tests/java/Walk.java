// The walk of tests/summary.py and tests/walk.js over the generated Java parser:
//
//   java -cp RUNTIME_AND_GENERATED_CLASSES:. Walk < paths.txt
//
// prints one JSON object {path: outcome}. Built and run by test_targets.py when
// KAITAI_JAVA_RUNTIME names a checkout of the Kaitai Java runtime (io.kaitai.struct, 0.11);
// CI cannot fetch it. Java decodes strings with replacement characters, so the names that are
// not UTF-8 (which Python rejects) read here; the test allows for exactly those.
import io.kaitai.struct.ByteBufferKaitaiStream;
import io.kaitai.struct.KaitaiStream;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.BufferUnderflowException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.List;

public class Walk {
    static String sha(byte[] data) throws Exception {
        byte[] d = MessageDigest.getInstance("SHA-256").digest(data);
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 8; i++) sb.append(String.format("%02x", d[i]));
        return sb.toString();
    }

    static String str(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') sb.append('\\').append(c);
            else if (c < 0x20 || c > 0x7e) sb.append(String.format("\\u%04x", (int) c));
            else sb.append(c);
        }
        return sb.append('"').toString();
    }

    /** [logical cluster, sha] of every data cluster under a map node. */
    static void map(Nvbox.MapNode node, int level, long fanout, long first, List<String> out) throws Exception {
        long span = 1;
        for (int i = 1; i < level; i++) span *= fanout;
        for (int i = 0; i < node.entries().size(); i++) {
            Nvbox.MapRef e = node.entries().get(i);
            if (e.pointer().offset() == 0) continue;
            if (level == 1) out.add("[" + (first + i) + "," + str(sha(e.child().data())) + "]");
            else map(e.child(), level - 1, fanout, first + i * span, out);
        }
    }

    static String clusterMap(Nvbox.ClusterMap cm, long fanout) throws Exception {
        List<String> out = new ArrayList<>();
        if (cm.rootPointer().pointer().offset() != 0) {
            int depth = (int) (long) cm.depth().value();
            if (depth == 0) out.add("[0," + str(sha(cm.rootNode().data())) + "]");
            else map(cm.rootNode(), depth, fanout, 0, out);
        }
        return "[" + String.join(",", out) + "]";
    }

    static void directory(Nvbox.DirNode node, long fanout, List<String> out) throws Exception {
        if (node.level() == 0) {
            for (Nvbox.DirEntry e : node.body().entries()) {
                Nvbox.DirEntryBody b = e.body();
                Nvbox.BlobContent c = b.content();
                String d = "{\"name\":" + str(b.name().value()) + ",\"size\":" + b.size().value()
                    + ",\"ext\":" + b.extensions().size();
                if (c.tag() == 0x80) d += ",\"inline\":" + str(sha(c.inlineData()));
                else d += ",\"depth\":" + c.clusters().depth().value() + ",\"clusters\":" + clusterMap(c.clusters(), fanout);
                out.add(d + "}");
            }
        } else {
            for (Nvbox.DirBranch br : node.body().branches()) directory(br.childNode(), fanout, out);
        }
    }

    static void refcounts(Nvbox.RefcountNode node, int level, long fanout, long half, long first, List<String> out) {
        if (level == 1) {
            List<Integer> counts = node.counts();
            for (int j = 0; j < counts.size(); j++)
                if (counts.get(j) != 0) out.add("\"" + (first + j) + "\":" + counts.get(j));
            return;
        }
        long span = half;
        for (int i = 2; i < level; i++) span *= fanout;
        List<Nvbox.RefcountRef> entries = node.entries();
        for (int i = 0; i < entries.size(); i++)
            if (entries.get(i).pointer().offset() != 0)
                refcounts(entries.get(i).child(), level - 1, fanout, half, first + i * span, out);
    }

    static String summarize(Nvbox img) throws Exception {
        Nvbox.CommitSlot s = img.activeSlot();
        Nvbox.ImageHeader h = img.header();
        List<String> exts = new ArrayList<>(), creators = new ArrayList<>();
        for (Nvbox.HeaderExtension x : h.extensions()) {
            exts.add("[" + x.extType() + "," + x.extLength() + "]");
            if (x.extType() == 1) creators.add(str(x.creatorName()));
        }
        StringBuilder o = new StringBuilder("{");
        o.append("\"cluster_bits\":").append(h.clusterBits())
         .append(",\"capacity\":").append(Long.toUnsignedString(h.capacityClusters()))
         .append(",\"extensions\":[").append(String.join(",", exts)).append("]")
         .append(",\"creator\":[").append(String.join(",", creators)).append("]")
         .append(",\"slot\":").append(img.activeSlotIndex())
         .append(",\"generation\":").append(Long.toUnsignedString(s.generation()))
         .append(",\"image_clusters\":").append(s.imageClusters())
         .append(",\"blob_count\":").append(Long.toUnsignedString(s.blobCount()))
         .append(",\"encrypted\":").append(img.isEncrypted());
        long fanout = img.clusterSize() / img.pointerWidth();
        if (img.isEncrypted()) {
            List<String> kinds = new ArrayList<>();
            for (Nvbox.KeySlot k : img.keyslotTable().slots()) kinds.add(String.valueOf(k.kind().id()));
            return o.append(",\"key_slots\":[").append(String.join(",", kinds)).append("]}").toString();
        }
        List<String> counts = new ArrayList<>();
        refcounts(img.refcountRootNode(), s.refcountDepth(), fanout, img.clusterSize() / 2, 0, counts);
        o.append(",\"refcounts\":{").append(String.join(",", counts)).append("}");
        List<String> blobs = new ArrayList<>();
        if (img.dirRootNode() != null) directory(img.dirRootNode(), fanout, blobs);
        o.append(",\"blobs\":[").append(String.join(",", blobs)).append("]");
        if (s.snaptableDepth() != 0) {
            List<String> table = new ArrayList<>();
            map(img.snaptableRootNode(), s.snaptableDepth(), fanout, 0, table);
            o.append(",\"snapshot_table_clusters\":[").append(String.join(",", table)).append("]");
        }
        if (img.snapshotTable() != null) {
            List<String> snaps = new ArrayList<>();
            for (Nvbox.Snapshot sn : img.snapshotTable().snapshots()) {
                Nvbox.SnapshotBody b = sn.body();
                List<String> tree = new ArrayList<>();
                if (b.dirRootNode() != null) directory(b.dirRootNode(), fanout, tree);
                snaps.add("{\"id\":" + b.id().value() + ",\"name\":" + str(b.name().value())
                    + ",\"blob_count\":" + b.blobCount().value()
                    + ",\"metadata\":" + (b.metadata() == null ? "null" : str(sha(b.metadata().value())))
                    + ",\"blobs\":[" + String.join(",", tree) + "]}");
            }
            o.append(",\"snapshots\":[").append(String.join(",", snaps)).append("]");
        }
        return o.append("}").toString();
    }

    static String outcome(String path) throws Exception {
        byte[] data = Files.readAllBytes(Paths.get(path));
        try {
            return summarize(new Nvbox(new ByteBufferKaitaiStream(data)));
        } catch (KaitaiStream.ValidationFailedError e) {
            // the message starts with the srcPath (the field itself is protected)
            String src = e.getMessage().substring(0, e.getMessage().indexOf(": "));
            return "{\"error\":" + str(e.getClass().getSimpleName()) + ",\"path\":" + str(src) + "}";
        } catch (BufferUnderflowException | IllegalArgumentException e) {
            return "{\"error\":\"eof\"}";   // a read or a seek past the end of the buffer
        }
    }

    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        List<String> out = new ArrayList<>();
        for (String line; (line = in.readLine()) != null; ) {
            if (!line.isEmpty()) out.add(str(line) + ":" + outcome(line));
        }
        System.out.print("{" + String.join(",", out) + "}");
    }
}

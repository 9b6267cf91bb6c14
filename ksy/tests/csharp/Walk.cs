// The walk of tests/summary.py and tests/walk.js over the generated C# parser:
//
//   mono walk.exe < paths.txt      (built by test_targets.py with mcs)
//
// prints one JSON object {path: outcome}. test_targets.py builds and runs it when
// KAITAI_CSHARP_RUNTIME names a checkout of the Kaitai C# runtime (0.11). .NET decodes bad
// UTF-8 with replacement characters, so the names Python rejects read here.
using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Security.Cryptography;
using System.Text;
using Kaitai;

public static class Walk
{
    static string Sha(byte[] data)
    {
        using (var h = SHA256.Create())
            return string.Concat(h.ComputeHash(data).Take(8).Select(b => b.ToString("x2")));
    }

    static string Str(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (char c in s)
        {
            if (c == '"' || c == '\\') sb.Append('\\').Append(c);
            else if (c < 0x20 || c > 0x7e) sb.Append(string.Format("\\u{0:x4}", (int) c));
            else sb.Append(c);
        }
        return sb.Append('"').ToString();
    }

    static void Map(Nvbox.MapNode node, int level, ulong fanout, ulong first, List<string> output)
    {
        ulong span = 1;
        for (int i = 1; i < level; i++) span *= fanout;
        for (int i = 0; i < node.Entries.Count; i++)
        {
            var e = node.Entries[i];
            if (e.Pointer.Offset == 0) continue;
            if (level == 1) output.Add("[" + (first + (ulong) i) + "," + Str(Sha(e.Child.Data)) + "]");
            else Map(e.Child, level - 1, fanout, first + (ulong) i * span, output);
        }
    }

    static string ClusterMap(Nvbox.ClusterMap cm, ulong fanout)
    {
        var output = new List<string>();
        if (cm.RootPointer.Pointer.Offset != 0)
        {
            int depth = (int) cm.Depth.Value;
            if (depth == 0) output.Add("[0," + Str(Sha(cm.RootNode.Data)) + "]");
            else Map(cm.RootNode, depth, fanout, 0, output);
        }
        return "[" + string.Join(",", output) + "]";
    }

    static void Directory(Nvbox.DirNode node, ulong fanout, List<string> output)
    {
        if (node.Level == 0)
        {
            foreach (var e in node.Body.Entries)
            {
                var b = e.Body;
                var c = b.Content;
                string d = "{\"name\":" + Str(b.Name.Value) + ",\"size\":" + b.Size.Value + ",\"ext\":" + b.Extensions.Count;
                if (c.Tag == 0x80) d += ",\"inline\":" + Str(Sha(c.InlineData));
                else d += ",\"depth\":" + c.Clusters.Depth.Value + ",\"clusters\":" + ClusterMap(c.Clusters, fanout);
                output.Add(d + "}");
            }
        }
        else
        {
            foreach (var br in node.Body.Branches) Directory(br.ChildNode, fanout, output);
        }
    }

    static void Refcounts(Nvbox.RefcountNode node, int level, ulong fanout, ulong half, ulong first, List<string> output)
    {
        if (level == 1)
        {
            for (int j = 0; j < node.Counts.Count; j++)
                if (node.Counts[j] != 0) output.Add("\"" + (first + (ulong) j) + "\":" + node.Counts[j]);
            return;
        }
        ulong span = half;
        for (int i = 2; i < level; i++) span *= fanout;
        for (int i = 0; i < node.Entries.Count; i++)
            if (node.Entries[i].Pointer.Offset != 0)
                Refcounts(node.Entries[i].Child, level - 1, fanout, half, first + (ulong) i * span, output);
    }

    static string Summarize(Nvbox img)
    {
        var s = img.ActiveSlot;
        var h = img.Header;
        var exts = h.Extensions.Select(x => "[" + x.ExtType + "," + x.ExtLength + "]").ToList();
        var creators = h.Extensions.Where(x => x.ExtType == 1).Select(x => Str(x.CreatorName)).ToList();
        var o = new StringBuilder("{");
        o.Append("\"cluster_bits\":").Append(h.ClusterBits)
         .Append(",\"capacity\":").Append(h.CapacityClusters)
         .Append(",\"extensions\":[").Append(string.Join(",", exts)).Append("]")
         .Append(",\"creator\":[").Append(string.Join(",", creators)).Append("]")
         .Append(",\"slot\":").Append(img.ActiveSlotIndex)
         .Append(",\"generation\":").Append(s.Generation)
         .Append(",\"image_clusters\":").Append(s.ImageClusters)
         .Append(",\"blob_count\":").Append(s.BlobCount)
         .Append(",\"encrypted\":").Append(img.IsEncrypted ? "true" : "false");
        ulong fanout = (ulong) (img.ClusterSize / img.PointerWidth);
        if (img.IsEncrypted)
        {
            var kinds = img.KeyslotTable.Slots.Select(k => ((long) k.Kind).ToString());
            return o.Append(",\"key_slots\":[").Append(string.Join(",", kinds)).Append("]}").ToString();
        }
        var counts = new List<string>();
        Refcounts(img.RefcountRootNode, s.RefcountDepth, fanout, (ulong) img.ClusterSize / 2, 0, counts);
        o.Append(",\"refcounts\":{").Append(string.Join(",", counts)).Append("}");
        var blobs = new List<string>();
        if (img.DirRootNode != null) Directory(img.DirRootNode, fanout, blobs);
        o.Append(",\"blobs\":[").Append(string.Join(",", blobs)).Append("]");
        if (s.SnaptableDepth != 0)
        {
            var table = new List<string>();
            Map(img.SnaptableRootNode, s.SnaptableDepth, fanout, 0, table);
            o.Append(",\"snapshot_table_clusters\":[").Append(string.Join(",", table)).Append("]");
        }
        if (img.SnapshotTable != null)
        {
            var snaps = new List<string>();
            foreach (var sn in img.SnapshotTable.Snapshots)
            {
                var b = sn.Body;
                var tree = new List<string>();
                if (b.DirRootNode != null) Directory(b.DirRootNode, fanout, tree);
                snaps.Add("{\"id\":" + b.Id.Value + ",\"name\":" + Str(b.Name.Value) + ",\"blob_count\":" + b.BlobCount.Value
                    + ",\"metadata\":" + (b.Metadata == null ? "null" : Str(Sha(b.Metadata.Value)))
                    + ",\"blobs\":[" + string.Join(",", tree) + "]}");
            }
            o.Append(",\"snapshots\":[").Append(string.Join(",", snaps)).Append("]");
        }
        return o.Append("}").ToString();
    }

    static string Outcome(string path)
    {
        byte[] data = File.ReadAllBytes(path);
        try
        {
            return Summarize(new Nvbox(new KaitaiStream(data)));
        }
        catch (ValidationFailedError e)
        {
            // the message starts with the srcPath
            string src = e.Message.Substring(0, e.Message.IndexOf(": "));
            return "{\"error\":" + Str(e.GetType().Name) + ",\"path\":" + Str(src) + "}";
        }
        catch (EndOfStreamException)
        {
            return "{\"error\":\"eof\"}";
        }
    }

    public static void Main()
    {
        var output = new List<string>();
        string line;
        while ((line = Console.ReadLine()) != null)
            if (line.Length > 0) output.Add(Str(line) + ":" + Outcome(line));
        Console.Write("{" + string.Join(",", output) + "}");
    }
}

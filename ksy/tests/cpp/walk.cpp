// The walk of tests/summary.py and tests/walk.js over the generated C++ parser (cpp_stl,
// C++11, the runtime's iconv string decoding):
//
//   ./walk < paths.txt      (built by test_targets.py with g++, libcrypto for SHA-256)
//
// prints one JSON object {path: outcome}. test_targets.py builds and runs it when
// KAITAI_CPP_RUNTIME names a checkout of the Kaitai C++/STL runtime (0.11); CI cannot fetch it.
#include <openssl/sha.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <typeinfo>
#include <vector>

#include "kaitai/exceptions.h"
#include "nvbox.h"

using std::string;
using std::vector;

static string sha(const string& data) {
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), d);
    char hex[17];
    for (int i = 0; i < 8; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    return string(hex, 16);
}

static string str(const string& s) {
    // JSON string of UTF-8 text: escapes for quotes, backslashes and control bytes only.
    string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') { out += '\\'; out += c; }
        else if (c < 0x20) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); out += b; }
        else out += c;
    }
    return out + "\"";
}

static string join(const vector<string>& v) {
    string out;
    for (size_t i = 0; i < v.size(); i++) out += (i ? "," : "") + v[i];
    return out;
}

static void map(nvbox_t::map_node_t* node, int level, uint64_t fanout, uint64_t first, vector<string>& out) {
    uint64_t span = 1;
    for (int i = 1; i < level; i++) span *= fanout;
    vector<nvbox_t::map_ref_t*>& entries = *node->entries();
    for (size_t i = 0; i < entries.size(); i++) {
        nvbox_t::map_ref_t* e = entries[i];
        if (e->pointer()->offset() == 0) continue;
        if (level == 1)
            out.push_back("[" + std::to_string(first + i) + "," + str(sha(e->child()->data())) + "]");
        else
            map(e->child(), level - 1, fanout, first + i * span, out);
    }
}

static string cluster_map(nvbox_t::cluster_map_t* cm, uint64_t fanout) {
    vector<string> out;
    if (cm->root_pointer()->pointer()->offset() != 0) {
        int depth = static_cast<int>(cm->depth()->value());
        if (depth == 0) out.push_back("[0," + str(sha(cm->root_node()->data())) + "]");
        else map(cm->root_node(), depth, fanout, 0, out);
    }
    return "[" + join(out) + "]";
}

static void directory(nvbox_t::dir_node_t* node, uint64_t fanout, vector<string>& out) {
    if (node->level() == 0) {
        for (nvbox_t::dir_entry_t* e : *node->body()->entries()) {
            nvbox_t::dir_entry_body_t* b = e->body();
            nvbox_t::blob_content_t* c = b->content();
            string d = "{\"name\":" + str(b->name()->value()) + ",\"size\":" + std::to_string(b->size()->value())
                + ",\"ext\":" + std::to_string(b->extensions()->size());
            if (c->tag() == 0x80) d += ",\"inline\":" + str(sha(c->inline_data()));
            else d += ",\"depth\":" + std::to_string(c->clusters()->depth()->value()) + ",\"clusters\":" + cluster_map(c->clusters(), fanout);
            out.push_back(d + "}");
        }
    } else {
        for (nvbox_t::dir_branch_t* br : *node->body()->branches()) directory(br->child_node(), fanout, out);
    }
}

static void refcounts(nvbox_t::refcount_node_t* node, int level, uint64_t fanout, uint64_t half, uint64_t first, vector<string>& out) {
    if (level == 1) {
        vector<uint16_t>& counts = *node->counts();
        for (size_t j = 0; j < counts.size(); j++)
            if (counts[j]) out.push_back("\"" + std::to_string(first + j) + "\":" + std::to_string(counts[j]));
        return;
    }
    uint64_t span = half;
    for (int i = 2; i < level; i++) span *= fanout;
    vector<nvbox_t::refcount_ref_t*>& entries = *node->entries();
    for (size_t i = 0; i < entries.size(); i++)
        if (entries[i]->pointer()->offset() != 0)
            refcounts(entries[i]->child(), level - 1, fanout, half, first + i * span, out);
}

static string summarize(nvbox_t* img) {
    nvbox_t::commit_slot_t* s = img->active_slot();
    nvbox_t::image_header_t* h = img->header();
    vector<string> exts, creators;
    for (nvbox_t::header_extension_t* x : *h->extensions()) {
        exts.push_back("[" + std::to_string(x->ext_type()) + "," + std::to_string(x->ext_length()) + "]");
        if (x->ext_type() == 1) creators.push_back(str(x->creator_name()));
    }
    string o = "{\"cluster_bits\":" + std::to_string(h->cluster_bits())
        + ",\"capacity\":" + std::to_string(h->capacity_clusters())
        + ",\"extensions\":[" + join(exts) + "],\"creator\":[" + join(creators) + "]"
        + ",\"slot\":" + std::to_string(img->active_slot_index())
        + ",\"generation\":" + std::to_string(s->generation())
        + ",\"image_clusters\":" + std::to_string(s->image_clusters())
        + ",\"blob_count\":" + std::to_string(s->blob_count())
        + ",\"encrypted\":" + (img->is_encrypted() ? "true" : "false");
    uint64_t fanout = img->cluster_size() / img->pointer_width();
    if (img->is_encrypted()) {
        vector<string> kinds;
        for (nvbox_t::key_slot_t* k : *img->keyslot_table()->slots()) kinds.push_back(std::to_string(k->kind()));
        return o + ",\"key_slots\":[" + join(kinds) + "]}";
    }
    vector<string> counts;
    refcounts(img->refcount_root_node(), s->refcount_depth(), fanout, img->cluster_size() / 2, 0, counts);
    o += ",\"refcounts\":{" + join(counts) + "}";
    vector<string> blobs;
    if (img->dir_root_node() != nullptr) directory(img->dir_root_node(), fanout, blobs);
    o += ",\"blobs\":[" + join(blobs) + "]";
    if (s->snaptable_depth() != 0) {
        vector<string> table;
        map(img->snaptable_root_node(), s->snaptable_depth(), fanout, 0, table);
        o += ",\"snapshot_table_clusters\":[" + join(table) + "]";
    }
    if (img->snapshot_table() != nullptr) {
        vector<string> snaps;
        for (nvbox_t::snapshot_t* sn : *img->snapshot_table()->snapshots()) {
            nvbox_t::snapshot_body_t* b = sn->body();
            vector<string> tree;
            if (b->dir_root_node() != nullptr) directory(b->dir_root_node(), fanout, tree);
            snaps.push_back("{\"id\":" + std::to_string(b->id()->value()) + ",\"name\":" + str(b->name()->value())
                + ",\"blob_count\":" + std::to_string(b->blob_count()->value())
                + ",\"metadata\":" + (b->metadata() == nullptr ? string("null") : str(sha(b->metadata()->value())))
                + ",\"blobs\":[" + join(tree) + "]}");
        }
        o += ",\"snapshots\":[" + join(snaps) + "]";
    }
    return o + "}";
}

static string error_kind(const std::exception& e) {
    // The runtime's validation errors are templates; their mangled names say which one.
    const string name = typeid(e).name();
    const char* kinds[][2] = {
        {"validation_not_equal_error", "ValidationNotEqualError"},
        {"validation_less_than_error", "ValidationLessThanError"},
        {"validation_greater_than_error", "ValidationGreaterThanError"},
        {"validation_not_any_of_error", "ValidationNotAnyOfError"},
        {"validation_not_in_enum_error", "ValidationNotInEnumError"},
        {"validation_expr_error", "ValidationExprError"},
    };
    for (auto& k : kinds)
        if (name.find(k[0]) != string::npos) return k[1];
    return name;
}

static string outcome(const string& path) {
    std::ifstream f(path, std::ifstream::binary);
    std::stringstream buf;
    buf << f.rdbuf();
    std::istringstream is(buf.str());
    kaitai::kstream ks(&is);
    try {
        nvbox_t img(&ks);
        return summarize(&img);
    } catch (const kaitai::validation_failed_error& e) {
        string what = e.what();
        return "{\"error\":" + str(error_kind(e)) + ",\"path\":" + str(what.substr(0, what.find(": "))) + "}";
    } catch (const kaitai::illegal_seq_in_encoding&) {
        return "{\"error\":\"utf8\"}";
    } catch (const std::ios_base::failure&) {
        return "{\"error\":\"eof\"}";   // a read or a seek past the end of the stream
    }
}

int main() {
    vector<string> out;
    for (string line; std::getline(std::cin, line);)
        if (!line.empty()) out.push_back(str(line) + ":" + outcome(line));
    std::cout << "{" << join(out) << "}";
    return 0;
}

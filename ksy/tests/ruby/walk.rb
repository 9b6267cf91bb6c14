# The walk of tests/summary.py and tests/walk.js over the generated Ruby parser:
#
#   ruby -I RUNTIME/lib -I BUILD/ruby walk.rb < paths.txt
#
# prints one JSON object {path: outcome}. test_targets.py runs it when KAITAI_RUBY_RUNTIME
# names a checkout of the Kaitai Ruby runtime (0.11). Ruby's `force_encoding` does not check
# UTF-8, so the walk does, on each name it reads (as Python's decoder does on parsing).
require 'digest'
require 'json'
require 'nvbox'

class BadUtf8 < StandardError; end

def text(s)
  raise BadUtf8 unless s.valid_encoding?
  s
end

def sha(data)
  Digest::SHA256.hexdigest(data)[0, 16]
end

def walk_map(node, level, fanout, first, out)
  span = fanout**(level - 1)
  node.entries.each_with_index do |e, i|
    next if e.pointer.offset == 0
    if level == 1
      out << [first + i, sha(e.child.data)]
    else
      walk_map(e.child, level - 1, fanout, first + i * span, out)
    end
  end
end

def cluster_map(cm, fanout)
  out = []
  if cm.root_pointer.pointer.offset != 0
    if cm.depth.value == 0
      out << [0, sha(cm.root_node.data)]
    else
      walk_map(cm.root_node, cm.depth.value, fanout, 0, out)
    end
  end
  out
end

def directory(node, fanout, out)
  if node.level == 0
    node.body.entries.each do |e|
      b = e.body
      c = b.content
      d = { 'name' => text(b.name.value), 'size' => b.size.value, 'ext' => b.extensions.size }
      if c.tag == 0x80
        d['inline'] = sha(c.inline_data)
      else
        d['depth'] = c.clusters.depth.value
        d['clusters'] = cluster_map(c.clusters, fanout)
      end
      out << d
    end
  else
    node.body.branches.each { |br| directory(br.child_node, fanout, out) }
  end
end

def refcounts(node, level, fanout, half, first, out)
  if level == 1
    node.counts.each_with_index { |n, j| out[(first + j).to_s] = n if n != 0 }
    return
  end
  span = half * fanout**(level - 2)
  node.entries.each_with_index do |e, i|
    refcounts(e.child, level - 1, fanout, half, first + i * span, out) if e.pointer.offset != 0
  end
end

def summarize(img)
  s = img.active_slot
  h = img.header
  out = {
    'cluster_bits' => h.cluster_bits, 'capacity' => h.capacity_clusters,
    'extensions' => h.extensions.map { |x| [x.ext_type, x.ext_length] },
    'creator' => h.extensions.select { |x| x.ext_type == 1 }.map { |x| text(x.creator_name) },
    'slot' => img.active_slot_index, 'generation' => s.generation,
    'image_clusters' => s.image_clusters, 'blob_count' => s.blob_count,
    'encrypted' => img.is_encrypted ? true : false,
  }
  fanout = img.cluster_size / img.pointer_width
  if img.is_encrypted
    out['key_slots'] = img.keyslot_table.slots.map { |k| Nvbox::I__KEY_SLOT_KIND[k.kind] }
    return out
  end
  counts = {}
  refcounts(img.refcount_root_node, s.refcount_depth, fanout, img.cluster_size / 2, 0, counts)
  out['refcounts'] = counts
  blobs = []
  directory(img.dir_root_node, fanout, blobs) unless img.dir_root_node.nil?
  out['blobs'] = blobs
  if s.snaptable_depth != 0
    table = []
    walk_map(img.snaptable_root_node, s.snaptable_depth, fanout, 0, table)
    out['snapshot_table_clusters'] = table
  end
  unless img.snapshot_table.nil?
    out['snapshots'] = img.snapshot_table.snapshots.map do |sn|
      b = sn.body
      tree = []
      directory(b.dir_root_node, fanout, tree) unless b.dir_root_node.nil?
      { 'id' => b.id.value, 'name' => text(b.name.value), 'blob_count' => b.blob_count.value,
        'metadata' => b.metadata.nil? ? nil : sha(b.metadata.value), 'blobs' => tree }
    end
  end
  out
end

def outcome(path)
  summarize(Nvbox.new(Kaitai::Struct::Stream.new(File.binread(path))))
rescue Kaitai::Struct::ValidationFailedError => e
  # the message starts with the src_path (the runtime has no reader for it)
  { 'error' => e.class.name.split('::').last, 'path' => e.message[0, e.message.index(': ')] }
rescue EOFError
  { 'error' => 'eof' }
rescue BadUtf8
  { 'error' => 'utf8' }
end

result = {}
$stdin.each_line do |line|
  line = line.chomp
  result[line] = outcome(line) unless line.empty?
end
print JSON.generate(result)

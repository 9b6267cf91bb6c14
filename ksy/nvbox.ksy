meta:
  id: nvbox
  title: nvbox image (named device-state blobs), format version 1
  application: nvbox
  file-extension: nvbox
  license: MIT
  ks-version: '0.11'
  imports:
    - nvbox_der
  encoding: UTF-8
  endian: le
  bit-endian: le
doc: |
  An nvbox image stores named binary blobs (TPM state, NIC EEPROM, VPD, UEFI
  variables) in a file divided into clusters of 2^cluster_bits bytes. The
  first 2048 bytes hold the header, two commit slots and 512 reserved bytes;
  every other structure fills exactly one cluster and is reached through a
  pointer that carries its CRC-32C (and, in encrypted images, its AES-GCM
  nonce and tag), so the image is a Merkle tree rooted in the commit slot.

  Only the header area is read eagerly. `active_slot` picks the valid slot
  with the higher generation (CRC-32C not checked, see below) and checks its
  fields; the trees (`refcount_root_node`, `dir_root_node`,
  `snaptable_root_node`, `snapshot_table`) and the key slot table
  (`keyslot_table`) are lazy instances that read one cluster each, so
  opening a large image and reading its directory root reads only the header
  area and that cluster. In an encrypted image the tree clusters are
  ciphertext and those instances are null; the header, both slots and the
  key slot table parse.

  What Kaitai cannot check (verify in application code, see ksy/README.md):
  every CRC-32C (`header_crc`, `slot_crc`, each pointer's `crc`; the covered
  bytes are exposed as `crc_input` / `cluster_bytes` instances), the slot
  MAC and AES-GCM tags, SHA-256 key order in directory leaves, reference
  counts against the trees, UTF-8 "no NUL" rules, ascending order of
  extension fields, and trees deeper than one cluster-map for the snapshot
  table (its bytes span several clusters).
doc-ref:
  - spec/nvbox.md
  - spec/nvbox.md#1-conventions [R-conv-1] [R-conv-2] [R-conv-3] [R-conv-5]
seq:
  - id: header
    size: 512
    type: image_header
    doc-ref: spec/nvbox.md#3-the-header
  - id: slot_a
    size: 512
    type: commit_slot(0, false)
    doc: Commit slot A (odd generations), read as is; see `active_slot`.
    doc-ref: spec/nvbox.md#4-commit-slots [R-slot-1]
  - id: slot_b
    size: 512
    type: commit_slot(1, false)
    doc: Commit slot B (even generations), read as is; see `active_slot`.
    doc-ref: spec/nvbox.md#4-commit-slots [R-slot-1]
  - id: reserved
    size: 512
    doc: |
      Bytes 1536-2047 of the header area. The spec calls them reserved but
      gives no rule or error code for them, so they are not validated.
    doc-ref: spec/nvbox.md#1-conventions [R-conv-3]
instances:
  cluster_size:
    value: header.cluster_size
  active_slot_index:
    value: 'slot_b.is_valid and (not slot_a.is_valid or slot_b.generation > slot_a.generation) ? 1 : 0'
    doc: |
      0 for slot A, 1 for slot B: the valid slot with the higher generation
      (CRC-32C not checked: a slot with a correct magic and parity but a bad
      `slot_crc` counts as valid here, not for a conforming reader).
    doc-ref: spec/nvbox.md#4-commit-slots [R-slot-3]
  active_slot:
    pos: 512 + 512 * active_slot_index.as<s8>
    size: 512
    type: commit_slot(active_slot_index.as<u1>, true)
    doc: |
      The chosen commit slot, re-read with every field check of R-slot-5
      enabled (ranges, "iff" rules, unknown incompatible features, pointers).
      A ValidationExprError on its `generation` means no slot is valid
      (`slot.none_valid`).
    doc-ref: spec/nvbox.md#4-commit-slots [R-slot-2] [R-slot-3] [R-slot-5]
  is_encrypted:
    value: active_slot.is_encrypted
    doc-ref: spec/nvbox.md#10-encryption [R-enc-1]
  pointer_width:
    value: active_slot.pointer_width
  image_clusters:
    value: active_slot.image_clusters
  refcount_root_node:
    io: _root._io
    pos: active_slot.refcount_root.offset.as<s8>
    size: cluster_size
    type: refcount_node(active_slot.refcount_depth)
    if: not is_encrypted
    doc: Root of the refcount tree (a block when `refcount_depth` is 1).
    doc-ref: spec/nvbox.md#7-the-refcount-tree [R-ref-1] [R-ref-2]
  dir_root_node:
    io: _root._io
    pos: active_slot.dir_root.offset.as<s8>
    size: cluster_size
    type: dir_node((active_slot.dir_depth - 1).as<u1>)
    if: not is_encrypted and active_slot.dir_depth != 0
    doc: Root node of the directory B-tree; null when the directory is empty.
    doc-ref: spec/nvbox.md#9-the-directory [R-dir-1]
  snaptable_root_node:
    io: _root._io
    pos: active_slot.snaptable_root.offset.as<s8>
    size: cluster_size
    type: map_node(active_slot.snaptable_depth, active_slot.snaptable_root.offset, 0, active_slot.snaptable_root.offset)
    if: not is_encrypted and active_slot.snaptable_size != 0
    doc: Root of the snapshot table's cluster map.
    doc-ref: spec/nvbox.md#11-snapshots [R-snap-5]
  snapshot_table:
    io: _root._io
    pos: active_slot.snaptable_root.offset.as<s8>
    size: active_slot.snaptable_size
    type: snapshot_table_der
    if: not is_encrypted and active_slot.snaptable_size != 0 and active_slot.snaptable_depth == 0
    doc: |
      The DER snapshot table, when it fits one cluster (depth 0). A deeper
      table spans several clusters, which Kaitai cannot concatenate: read
      the data clusters through `snaptable_root_node` and parse their
      concatenation with the `snapshot_table_der` type.
    doc-ref: spec/nvbox.md#11-snapshots [R-snap-5]
  keyslot_table:
    io: _root._io
    pos: active_slot.keyslots.offset.as<s8>
    size: cluster_size
    type: keyslot_cluster
    if: is_encrypted
    doc: The plaintext key slot table of an encrypted image.
    doc-ref: spec/nvbox.md#101-keys [R-enc-2]
types:
  image_header:
    doc: |
      Written once by `create`. The magic is checked first, then the fields
      in order; the CRC (which a reader checks before `version`) is exposed,
      not verified.
    doc-ref: spec/nvbox.md#3-the-header [R-header-1] [R-header-9]
    seq:
      - id: magic
        contents: [0x8a, 0x4e, 0x56, 0x42, 0x0d, 0x0a, 0x1a, 0x0a]
        doc-ref: spec/nvbox.md#3-the-header [R-header-2]
      - id: version
        type: u4
        valid: 1
        doc-ref: spec/nvbox.md#3-the-header [R-header-3]
      - id: header_length
        type: u4
        valid:
          expr: _ % 8 == 0 and _ >= 128 and _ <= 504
        doc: Where the extension area begins; version 1 writes 128.
        doc-ref: spec/nvbox.md#3-the-header [R-header-4]
      - id: cluster_bits
        type: u1
        valid:
          min: 9
          max: 21
        doc-ref: spec/nvbox.md#3-the-header [R-header-5]
      - id: refcount_order
        type: u1
        valid: 4
        doc: log2 of the refcount width in bits (16-bit counts).
        doc-ref: spec/nvbox.md#3-the-header [R-header-6]
      - id: reserved0
        type: u2
        valid: 0
      - id: header_flags
        type: u4
        valid: 0
      - id: image_uuid
        size: 16
        doc: RFC 4122 version 4 identity of the image, bound into encryption.
      - id: capacity_clusters
        type: u8
        valid:
          expr: _ == 0 or (_ >= (header_clusters + 2).as<u8> and capacity_bytes.at_most_2_40)
        doc: 0 for a growable image, else the most clusters it may use (at most 2^40).
        doc-ref: spec/nvbox.md#3-the-header [R-header-7]
      - id: create_time
        type: u8
        doc: Seconds since 1970-01-01 UTC; informational.
      - id: reserved1
        type: u1
        repeat: expr
        repeat-expr: header_length - 56
        valid: 0
        doc: Zero up to `header_length` (fields of later versions would go here).
      - id: extensions
        type: header_extension
        repeat: until
        repeat-until: _.ext_type == ext_type::end_of_extensions.to_i.as<u2>
        doc: Extension records up to and including the end record.
        doc-ref: spec/nvbox.md#31-header-extensions [R-header-10]
    instances:
      cluster_size:
        value: 1 << cluster_bits
      header_clusters:
        value: (2048 + cluster_size - 1) / cluster_size
        doc: Clusters overlapping the 2048-byte header area.
        doc-ref: spec/nvbox.md#1-conventions [R-conv-3]
      capacity_bytes:
        pos: 40
        size: 8
        type: u8_bytes
        doc: The bytes of `capacity_clusters`, for the 2^40 bound without 64-bit literals.
      header_crc:
        pos: 508
        type: u4
        doc: CRC-32C of `crc_input` (bytes 0-507); not verified by Kaitai.
        doc-ref: spec/nvbox.md#3-the-header [R-header-8]
      crc_input:
        pos: 0
        size: 508
  header_extension:
    doc-ref: spec/nvbox.md#31-header-extensions [R-header-10] [R-header-11] [R-header-12]
    seq:
      - id: ext_type
        type: u2
        doc: |
          A value of enum `ext_type`, or one this version does not know. A
          plain integer, since the set is open (an enum gives null in Java and
          Lua for unknown values): compare with `ext_type::creator.to_i`.
      - id: ext_flags
        type: u2
        valid:
          expr: (_ & 0xfffe) == 0 and (ext_type != ext_type::end_of_extensions.to_i.as<u2> or _ == 0)
        doc: |
          Bit 0 `required`; bits 1-15 reserved. The end record is all zero.
      - id: ext_length
        type: u4
        valid:
          expr: |
            _io.pos + _.as<s8> + (8 - _.as<s8> % 8) % 8 <= 508
            and (ext_type != ext_type::end_of_extensions.to_i.as<u2> or _ == 0)
        doc: Length of `ext_data`; record and padding end before byte 508.
      - id: ext_data
        size: ext_length
        valid:
          expr: |
            ext_type == ext_type::creator.to_i.as<u2> ? _.size <= 64 :
            (ext_type == ext_type::end_of_extensions.to_i.as<u2> or (ext_flags & 1) == 0)
        doc: |
          For `creator`, the UTF-8 name of the creating program, at most 64
          bytes (`creator_name`). An unknown extension with the `required`
          flag makes the image unreadable (`header.extension_required`).
      - id: padding
        type: u1
        repeat: expr
        repeat-expr: 'ext_type == ext_type::end_of_extensions.to_i.as<u2> ? (508 - _io.pos).as<s8> : ((8 - ext_length.as<s8> % 8) % 8).as<s8>'
        valid: 0
        doc: |
          Zero padding of `ext_data` to a multiple of 8; after the end record,
          every byte up to 508 (R-header-10).
    instances:
      is_required:
        value: (ext_flags & 1) != 0
      creator_name:
        value: ext_data.to_s("UTF-8")
        if: ext_type == ext_type::creator.to_i.as<u2>
        doc: The creator's name as text (decoded when read).
  commit_slot:
    doc: |
      A 512-byte commit slot. `slot_index` is 0 for A (odd generations) and
      1 for B (even). With `strict` false (the raw `slot_a`/`slot_b`)
      nothing is checked, since an unused or torn slot is not an error; with
      `strict` true (`active_slot`) every range and "iff" rule of the table,
      the feature bits and the root pointers are checked.
    doc-ref: spec/nvbox.md#4-commit-slots [R-slot-1] [R-slot-2] [R-slot-5]
    params:
      - id: slot_index
        type: u1
      - id: strict
        type: bool
    seq:
      - id: slot_magic
        size: 8
        doc: ASCII `NVBXSLOT` in a valid slot.
      - id: generation
        type: u8
        valid:
          expr: not strict or (_ >= 1 and is_valid)
        doc: |
          >= 1, odd in slot A and even in slot B. Checked (with the magic,
          through `is_valid`) only on `active_slot`: no valid slot at all.
      - id: incompatible_features
        type: u8
        valid:
          expr: not check or _ == 0 or (_ == 1 and _root.header.cluster_bits >= 10)
        doc: |
          Bit mask of `incompatible_feature`. An unknown set bit:
          `feature.incompatible`. Encryption needs `cluster_bits >= 10`.
        doc-ref: spec/nvbox.md#5-feature-bits [R-feature-1] [R-enc-1]
      - id: compatible_features
        type: u8
        doc: No bits defined; unknown bits are ignored.
        doc-ref: spec/nvbox.md#5-feature-bits [R-feature-2]
      - id: autoclear_features
        type: u8
        doc: No bits defined; unknown bits may be ignored.
        doc-ref: spec/nvbox.md#5-feature-bits [R-feature-3]
      - id: image_clusters
        type: u8
        valid:
          expr: |
            not check or (_ >= (_root.header.header_clusters + 1).as<u8> and image_clusters_bytes.at_most_2_40
            and (_root.header.capacity_clusters == 0 or _ <= _root.header.capacity_clusters))
        doc-ref: spec/nvbox.md#1-conventions [R-conv-6]
      - id: blob_count
        type: u8
      - id: next_snapshot_id
        type: u8
        valid:
          expr: not check or _ >= 1
      - id: commit_time
        type: u8
      - id: refcount_depth
        type: u1
        valid:
          expr: not check or (_ >= 1 and _ <= 6 and _ >= refcount_levels.depth.as<u1> + 1)
        doc: Levels of the refcount tree; they must cover `image_clusters`.
        doc-ref: spec/nvbox.md#7-the-refcount-tree [R-ref-2]
      - id: dir_depth
        type: u1
        valid:
          expr: not check or _ <= 16
      - id: snaptable_depth
        type: u1
        valid:
          expr: not check or _ <= 8
      - id: reserved0
        type: u1
        valid:
          expr: not check or _ == 0
      - id: snapshot_count
        type: u4
        valid:
          expr: not check or _ <= 1024
      - id: snaptable_size
        type: u8
        valid:
          expr: |
            not check or (_ <= 2097152 and ((_ == 0) == (snapshot_count == 0))
            and snaptable_depth == snaptable_levels.depth.as<u1>)
        doc: Bytes of the DER snapshot table; its map depth must match.
        doc-ref: spec/nvbox.md#11-snapshots [R-snap-5] [R-map-1]
      - id: refcount_root
        size: 40
        type: 'pointer(is_encrypted, check ? image_clusters : 0)'
        valid:
          expr: not check or _.offset != 0
        doc-ref: spec/nvbox.md#6-pointers [R-ptr-1] [R-ptr-2]
      - id: dir_root
        size: 40
        type: 'pointer(is_encrypted, check ? image_clusters : 0)'
        valid:
          expr: not check or ((_.offset == 0) == (dir_depth == 0))
      - id: snaptable_root
        size: 40
        type: 'pointer(is_encrypted, check ? image_clusters : 0)'
        valid:
          expr: not check or ((_.offset == 0) == (snaptable_size == 0))
      - id: keyslots
        size: 40
        type: 'pointer(false, check ? image_clusters : 0)'
        valid:
          expr: not check or ((_.offset != 0) == is_encrypted)
        doc: Always a 16-byte plain pointer (the table is plaintext).
        doc-ref: spec/nvbox.md#101-keys [R-enc-2]
      - id: alloc_hint
        type: u8
        valid:
          expr: not check or _ <= image_clusters
        doc: |
          Every cluster from header_clusters up to (not including) this index
          has a non-zero count; 0 says nothing. Lets a writer skip scanning a
          full image for free clusters.
        doc-ref: spec/nvbox.md#73-allocation-and-deferred-reuse [R-alloc-6]
      - id: reserved1
        type: u1
        repeat: expr
        repeat-expr: 220
        valid:
          expr: not check or _ == 0
      - id: slot_mac
        size: 32
        valid:
          expr: |
            not check or is_encrypted or _ == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        doc: |
          Encrypted: HMAC-SHA-256 of bytes 0-475 (`mac_input`) under the slot
          MAC key (not verified here). Plain: zero.
        doc-ref: spec/nvbox.md#4-commit-slots [R-slot-6]
      - id: slot_crc
        type: u4
        doc: CRC-32C of `crc_input` (bytes 0-507); not verified by Kaitai.
    instances:
      is_valid:
        value: |
          slot_magic == [0x4e, 0x56, 0x42, 0x58, 0x53, 0x4c, 0x4f, 0x54]
          and generation >= 1 and generation.as<s8> % 2 == 1 - slot_index.as<s8>
        doc: Slot validity of R-slot-2 except the CRC-32C.
        doc-ref: spec/nvbox.md#4-commit-slots [R-slot-2]
      check:
        value: strict and is_valid
      is_encrypted:
        value: incompatible_features.as<s8> % 2 == 1
        doc: Bit 0 (`incompatible_feature::encrypted`); the only bit a valid slot may set.
      image_clusters_bytes:
        pos: 40
        size: 8
        type: u8_bytes
        doc: The bytes of `image_clusters`, for the 2^40 bound without 64-bit literals.
      pointer_width:
        value: 'is_encrypted ? 40 : 16'
        doc-ref: spec/nvbox.md#6-pointers [R-ptr-1]
      refcount_levels:
        pos: 0
        size: 0
        type: 'fanout_levels((image_clusters + (_root.header.cluster_size / 2).as<u8> - 1) / (_root.header.cluster_size / 2).as<u8>, (_root.header.cluster_size.as<u8> / pointer_width.as<u8>))'
        doc: Index levels needed above the refcount blocks.
      snaptable_levels:
        pos: 0
        size: 0
        type: 'fanout_levels((snaptable_size + _root.header.cluster_size.as<u8> - 1) / _root.header.cluster_size.as<u8>, (_root.header.cluster_size.as<u8> / pointer_width.as<u8>))'
        doc: The cluster-map depth R-map-1 requires for `snaptable_size`.
      crc_input:
        pos: 0
        size: 508
      mac_input:
        pos: 0
        size: 476
  pointer:
    doc: |
      A pointer to one cluster: 16 bytes plain (`offset`, `crc`, `reserved`),
      40 bytes encrypted (`offset`, `crc`, `nonce`, `tag`). `num_clusters`
      is the `image_clusters` of the state the pointer belongs to, used for
      the range check; 0 turns every check off (raw, inactive slots).
      `padding` is only non-empty in the 40-byte root fields of a commit slot
      of a plain image, and `keyslots`.
    doc-ref: spec/nvbox.md#6-pointers [R-ptr-1] [R-ptr-2]
    params:
      - id: is_encrypted
        type: bool
      - id: num_clusters
        type: u8
    seq:
      - id: offset
        type: u8
        valid:
          expr: num_clusters == 0 or _.as<s8> % _root.header.cluster_size.as<s8> == 0
        doc: Byte offset of the cluster; 0 = null (`pointer.misaligned`).
      - id: crc
        type: u4
        valid:
          expr: |
            num_clusters == 0 or (offset == 0 ? _ == 0 :
            offset.as<s8> / _root.header.cluster_size.as<s8> >= _root.header.header_clusters.as<s8>
            and offset.as<s8> / _root.header.cluster_size.as<s8> < num_clusters.as<s8>)
        doc: |
          CRC-32C of the cluster as stored (ciphertext when encrypted). Its
          check also carries the range rule of the offset: a null pointer has
          a zero `crc` (`pointer.reserved`), a non-null one names a cluster
          past the header area and below `image_clusters`
          (`pointer.out_of_range`).
        doc-ref: spec/nvbox.md#6-pointers [R-ptr-3]
      - id: reserved
        type: u4
        if: not is_encrypted
        valid:
          eq: 'num_clusters == 0 ? reserved : 0'
        doc: |
          Zero (`pointer.reserved`); anything in a raw slot. An `eq`, not an
          `expr`: C# cannot run `valid: expr` on a conditional field.
      - id: nonce
        size: 12
        if: is_encrypted
        valid:
          expr: num_clusters == 0 or offset != 0 or _ == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
      - id: tag
        size: 16
        if: is_encrypted
        valid:
          expr: |
            num_clusters == 0 or offset != 0
            or _ == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
      - id: padding
        type: u1
        repeat: eos
        valid:
          expr: num_clusters == 0 or _ == 0
    instances:
      is_null:
        value: offset == 0
      cluster_bytes:
        io: _root._io
        pos: offset.as<s8>
        size: _root.header.cluster_size
        if: offset != 0
        doc: The bytes `crc` covers (read only when accessed).
  u8_bytes:
    doc: |
      The 8 bytes of a little-endian u8, for bounds near 2^40 without 64-bit
      literals or shifts (32-bit in JavaScript, Java and C#, 0 in C++).
    seq:
      - id: low32
        type: u4
      - id: byte4
        type: u1
      - id: byte5
        type: u1
      - id: high16
        type: u2
    instances:
      at_most_2_40:
        value: high16 == 0 and (byte5 == 0 or (byte5 == 1 and byte4 == 0 and low32 == 0))
        doc: The value is at most 2^40.
  fanout_levels:
    doc: |
      The least k >= 0 with fanout^k >= count (count <= fanout^16), by
      repeated ceiling division; Kaitai has no loops or powers.
    params:
      - id: count
        type: u8
      - id: fanout
        type: u8
    instances:
      c1:
        value: ((count + fanout - 1) / fanout).as<u8>
      c2:
        value: ((c1 + fanout - 1) / fanout).as<u8>
      c3:
        value: ((c2 + fanout - 1) / fanout).as<u8>
      c4:
        value: ((c3 + fanout - 1) / fanout).as<u8>
      c5:
        value: ((c4 + fanout - 1) / fanout).as<u8>
      c6:
        value: ((c5 + fanout - 1) / fanout).as<u8>
      c7:
        value: ((c6 + fanout - 1) / fanout).as<u8>
      c8:
        value: ((c7 + fanout - 1) / fanout).as<u8>
      c9:
        value: ((c8 + fanout - 1) / fanout).as<u8>
      c10:
        value: ((c9 + fanout - 1) / fanout).as<u8>
      c11:
        value: ((c10 + fanout - 1) / fanout).as<u8>
      c12:
        value: ((c11 + fanout - 1) / fanout).as<u8>
      c13:
        value: ((c12 + fanout - 1) / fanout).as<u8>
      c14:
        value: ((c13 + fanout - 1) / fanout).as<u8>
      c15:
        value: ((c14 + fanout - 1) / fanout).as<u8>
      depth:
        value: |
          count <= 1 ? 0 : c1 <= 1 ? 1 : c2 <= 1 ? 2 : c3 <= 1 ? 3 :
          c4 <= 1 ? 4 : c5 <= 1 ? 5 : c6 <= 1 ? 6 : c7 <= 1 ? 7 :
          c8 <= 1 ? 8 : c9 <= 1 ? 9 : c10 <= 1 ? 10 : c11 <= 1 ? 11 :
          c12 <= 1 ? 12 : c13 <= 1 ? 13 : c14 <= 1 ? 14 : c15 <= 1 ? 15 : 16
  refcount_node:
    doc: |
      A node of the refcount tree. At level 1 a block: `cluster_size / 2`
      16-bit counts, entry j of the k-th block counting cluster
      `k * (cluster_size / 2) + j`. At level >= 2 an index node:
      `F = cluster_size / P` pointers, pointer j covering the j-th subtree of
      the level below (null: all counts in its range are 0). One type for
      both levels, not a switch: the C++ code of a switch-typed instance
      leaves its pointer uninitialized and deletes it when the read fails
      (a truncated image crashed it).
    doc-ref: spec/nvbox.md#7-the-refcount-tree [R-ref-1] [R-ref-2] [R-ref-4]
    params:
      - id: level
        type: u1
    seq:
      - id: counts
        type: u2
        repeat: eos
        if: level == 1
      - id: entries
        size: _root.pointer_width
        type: refcount_ref((level - 1).as<u1>)
        repeat: expr
        repeat-expr: _root.cluster_size.as<s8> / _root.pointer_width.as<s8>
        if: level > 1
      - id: padding
        type: u1
        repeat: eos
        valid: 0
        if: level > 1
        doc: '`cluster_size - F * P` trailing bytes, zero (`pointer.reserved`).'
  refcount_ref:
    params:
      - id: child_level
        type: u1
    seq:
      - id: pointer
        type: pointer(_root.is_encrypted, _root.image_clusters)
    instances:
      child:
        io: _root._io
        pos: pointer.offset.as<s8>
        size: _root.cluster_size
        type: refcount_node(child_level)
        if: pointer.offset != 0
  map_node:
    doc: |
      A cluster-map node: `F = cluster_size / P` pointers and nothing else.
      At level 1 they name data clusters, at level l > 1 map nodes of level
      l - 1; null pointers are holes that read as zeros. Level 0 is a data
      cluster (`data`): one type, not a switch, for the reason given at
      `refcount_node`.
    doc-ref: spec/nvbox.md#8-cluster-maps [R-map-1] [R-map-2] [R-map-3]
    params:
      - id: level
        type: u1
      - id: node_offset
        type: u8
        doc: Where this node is (its own pointer's offset).
      - id: parent_offset
        type: u8
        doc: The map node above it, 0 at the top.
      - id: top_offset
        type: u8
        doc: The top node of this map.
    seq:
      - id: data
        size-eos: true
        if: level == 0
        doc: One cluster of blob (or snapshot table) bytes.
      - id: entries
        size: _root.pointer_width
        type: map_ref(level, node_offset, parent_offset, top_offset)
        repeat: expr
        repeat-expr: _root.cluster_size.as<s8> / _root.pointer_width.as<s8>
        if: level > 0
      - id: padding
        type: u1
        repeat: eos
        valid: 0
        if: level > 0
        doc: '`cluster_size - F * P` trailing bytes, zero (`pointer.reserved`).'
  map_ref:
    params:
      - id: level
        type: u1
        doc: Level of the map node holding this pointer.
      - id: node_offset
        type: u8
      - id: parent_offset
        type: u8
      - id: top_offset
        type: u8
    seq:
      - id: pointer
        type: pointer(_root.is_encrypted, _root.image_clusters)
        valid:
          expr: |
            _.offset == 0 or (_.offset != node_offset and _.offset != parent_offset
            and _.offset != top_offset)
        doc: |
          Names no map node on its path (`pointer.cycle`): the node holding
          it, its parent or the map's top node. That is the whole path in maps
          of depth 3 or less; deeper maps have middle levels Kaitai cannot
          pass down (no arrays as parameters in every target).
    instances:
      child:
        io: _root._io
        pos: pointer.offset.as<s8>
        size: _root.cluster_size
        type: map_node((level - 1).as<u1>, pointer.offset, node_offset, top_offset)
        if: pointer.offset != 0
  dir_node:
    doc: |
      A directory B-tree node: a 16-byte header, one DER value (`DirLeaf` at
      level 0, `DirIndex` above) and zero padding to the cluster's end.
      `expected_level` is `dir_depth - 1` at the root and one less than the
      parent below it.
    doc-ref: spec/nvbox.md#9-the-directory [R-dir-1] [R-dir-2]
    params:
      - id: expected_level
        type: u1
    seq:
      - id: node_magic
        contents: NVDN
      - id: level
        type: u1
        valid:
          eq: expected_level
        doc: 0 for a leaf (`directory.depth` otherwise).
      - id: reserved0
        type: u1
        valid: 0
      - id: count
        type: u2
        valid:
          min: 1
        doc: Number of elements in the body.
      - id: body_length
        type: u4
        valid:
          max: (_root.cluster_size - 16).as<u4>
      - id: reserved1
        type: u4
        valid: 0
      - id: body
        size: body_length
        type: dir_body(level)
        valid:
          expr: _.num_elements.as<s8> == count.as<s8>
        doc: Exactly one DER SEQUENCE filling `body_length`.
      - id: padding
        type: u1
        repeat: eos
        valid: 0
  dir_body:
    doc: A `DirLeaf` (SEQUENCE OF DirEntry) or `DirIndex` (SEQUENCE OF DirBranch).
    doc-ref: spec/nvbox.md#92-asn1-module
    params:
      - id: level
        type: u1
    seq:
      - id: tag
        type: u1
        valid: 0x30
      - id: len
        type: nvbox_der::length
        valid:
          expr: _.value.as<s8> == _io.size - _io.pos
        doc: The SEQUENCE fills the body exactly (`der.malformed`).
      - id: entries
        type: dir_entry
        repeat: eos
        if: level == 0
      - id: branches
        type: dir_branch((level - 1).as<u1>)
        repeat: eos
        if: level > 0
    instances:
      num_elements:
        value: 'level == 0 ? entries.size : branches.size'
  dir_entry:
    doc: 'DirEntry ::= SEQUENCE { name, size, content, ... }'
    doc-ref: spec/nvbox.md#92-asn1-module [R-dir-3] [R-dir-4]
    seq:
      - id: tag
        type: u1
        valid: 0x30
      - id: len
        type: nvbox_der::length
      - id: body
        size: len.value
        type: dir_entry_body
  dir_entry_body:
    seq:
      - id: name
        type: der_utf8
        valid:
          expr: _.len.value >= 1 and _.len.value <= 255
        doc: 1 to 255 bytes of UTF-8 (`directory.entry`).
      - id: size
        type: der_integer
        valid:
          expr: _.body.at_most_2_48
        doc: The blob's size in bytes, at most 2^48.
      - id: content
        type: blob_content(size.value, map_levels.depth.as<u1>)
        valid:
          expr: |
            _.tag == 0x80
            ? (_.len.value.as<u8> == _.blob_size and _.blob_size <= inline_max.as<u8>)
            : _.clusters.depth.value == _.map_depth.as<u8>
        doc: |
          Inline bytes (length = `size` <= `inline_max`) or a cluster map
          whose depth matches `size` (`directory.entry`, `map.depth`).
        doc-ref: spec/nvbox.md#8-cluster-maps [R-map-1]
      - id: extensions
        type: nvbox_der
        repeat: eos
        valid:
          expr: _.is_context_specific and _.context_number >= 2 and _.context_number <= 30
        doc: Extension fields [2]..[30], kept but not interpreted.
    instances:
      inline_max:
        value: '_root.cluster_size / 8 < 1024 ? _root.cluster_size / 8 : 1024'
      map_levels:
        pos: 0
        size: 0
        type: 'fanout_levels((size.value + _root.cluster_size.as<u8> - 1) / _root.cluster_size.as<u8>, (_root.cluster_size.as<u8> / _root.pointer_width.as<u8>))'
      name_str:
        value: name.value
  blob_content:
    doc: |
      BlobContent ::= CHOICE { inline [0] OCTET STRING, clusters [1] ClusterMap }.
      The parameters are the entry's `size` and the map depth it requires,
      passed in so the checks compare a computed value with a parameter (two
      computed values compare as boxed objects in Java).
    params:
      - id: blob_size
        type: u8
      - id: map_depth
        type: u1
    seq:
      - id: tag
        type: u1
        valid:
          any-of:
            - 0x80
            - 0xa1
      - id: len
        type: nvbox_der::length
      - id: inline_data
        -orig-id: inline
        size: len.value
        if: tag == 0x80
        doc: The blob's bytes (component `inline`, a keyword in C++).
      - id: clusters
        size: len.value
        type: cluster_map
        if: tag == 0xa1
  cluster_map:
    doc: 'ClusterMap ::= SEQUENCE { depth INTEGER (0..16), root OCTET STRING }'
    doc-ref: spec/nvbox.md#8-cluster-maps [R-map-1] [R-map-2]
    seq:
      - id: depth
        type: der_integer
        valid:
          expr: _.value <= 16
      - id: root_pointer
        -orig-id: root
        type: der_pointer
        doc: |
          The component `root`, renamed: Nim's runtime gives every struct a `root`
          member already.
      - id: trailing
        size-eos: true
        valid:
          expr: _.size == 0
        doc: Nothing follows `root_pointer`; ClusterMap has no extension fields (`der.malformed`).
    instances:
      root_node:
        io: _root._io
        pos: root_pointer.pointer.offset.as<s8>
        size: _root.cluster_size
        type: map_node(depth.value.as<u1>, root_pointer.pointer.offset, 0, root_pointer.pointer.offset)
        if: root_pointer.pointer.offset != 0
        doc: The data cluster (depth 0) or the top map node.
  dir_branch:
    doc: 'DirBranch ::= SEQUENCE { lowKey OCTET STRING (SIZE (0 | 32)), child }'
    doc-ref: spec/nvbox.md#92-asn1-module [R-dir-2]
    params:
      - id: child_level
        type: u1
    seq:
      - id: tag
        type: u1
        valid: 0x30
      - id: len
        type: nvbox_der::length
      - id: low_key
        -orig-id: lowKey
        type: der_octets
        valid:
          expr: _.len.value == 0 or _.len.value == 32
        doc: Empty in the first branch, else a 32-byte SHA-256 key.
      - id: child
        type: der_pointer
        valid:
          expr: 4 + low_key.len.value + _.len.value == len.value
        doc: |
          The branch's SEQUENCE holds exactly `lowKey` and `child` (both short
          TLVs: 2 bytes of tag and length each), `der.malformed` otherwise.
    instances:
      child_node:
        io: _root._io
        pos: child.pointer.offset.as<s8>
        size: _root.cluster_size
        type: dir_node(child_level)
        doc: The child node (lazy).
  snapshot_table_der:
    doc: 'SnapshotTable ::= SEQUENCE OF Snapshot, `snaptable_size` bytes.'
    doc-ref: spec/nvbox.md#11-snapshots [R-snap-5]
    seq:
      - id: tag
        type: u1
        valid: 0x30
      - id: len
        type: nvbox_der::length
        valid:
          expr: _.value.as<s8> == _io.size - _io.pos and _.value != 0
        doc: |
          The SEQUENCE fills the table exactly; it is never empty (a table
          exists only when `snapshot_count` is not 0).
      - id: snapshots
        type: snapshot
        repeat: eos
        valid:
          expr: |
            _.body.id.value < _root.active_slot.next_snapshot_id
            and (not _io.eof or snapshots.size.as<s8> == _root.active_slot.snapshot_count.as<s8>)
        doc: Ids below `next_snapshot_id`; the last one makes the count `snapshot_count`.
  snapshot:
    doc: |
      Snapshot ::= SEQUENCE { id, name, createTime, blobCount, dirDepth,
      dirRoot, metadata [0] OPTIONAL, ... }
    doc-ref: spec/nvbox.md#92-asn1-module [R-snap-4]
    seq:
      - id: tag
        type: u1
        valid: 0x30
      - id: len
        type: nvbox_der::length
      - id: body
        size: len.value
        type: snapshot_body
  snapshot_body:
    seq:
      - id: id
        type: der_integer
        valid:
          expr: _.value >= 1 and _.body.below_2_63
      - id: name
        type: der_utf8
        valid:
          expr: _.len.value >= 1 and _.len.value <= 255
      - id: create_time
        -orig-id: createTime
        type: der_integer
      - id: blob_count
        -orig-id: blobCount
        type: der_integer
      - id: dir_depth
        -orig-id: dirDepth
        type: der_integer
        valid:
          expr: _.value <= 16
      - id: dir_root
        -orig-id: dirRoot
        type: der_pointer
      - id: metadata
        type: der_context_octets
        if: not _io.eof and next_tag == 0x80
        valid:
          expr: _.len.value <= 1024
        doc: '[0] OCTET STRING, at most 1024 bytes.'
      - id: extensions
        type: nvbox_der
        repeat: eos
        valid:
          expr: _.is_context_specific and _.context_number >= 1 and _.context_number <= 30
    instances:
      next_tag:
        pos: _io.pos
        type: u1
        if: not _io.eof
        doc: Peek at the tag after `dir_root` (is `metadata` present?).
      dir_root_node:
        io: _root._io
        pos: dir_root.pointer.offset.as<s8>
        size: _root.cluster_size
        type: dir_node((dir_depth.value - 1).as<u1>)
        if: dir_depth.value != 0
  der_integer:
    seq:
      - id: tag
        type: u1
        valid: 0x02
      - id: len
        type: nvbox_der::length
      - id: body
        size: len.value
        type: nvbox_der::uint_body
    instances:
      value:
        value: body.value
  der_utf8:
    seq:
      - id: tag
        type: u1
        valid: 0x0c
      - id: len
        type: nvbox_der::length
      - id: value
        type: str
        size: len.value
  der_octets:
    seq:
      - id: tag
        type: u1
        valid: 0x04
      - id: len
        type: nvbox_der::length
      - id: value
        size: len.value
  der_context_octets:
    seq:
      - id: tag
        type: u1
        valid: 0x80
      - id: len
        type: nvbox_der::length
      - id: value
        size: len.value
  der_pointer:
    doc: An OCTET STRING holding a pointer of the image's width (`directory.entry`).
    seq:
      - id: tag
        type: u1
        valid: 0x04
      - id: len
        type: nvbox_der::length
        valid:
          expr: '_root.is_encrypted ? _.value == 40 : _.value == 16'
      - id: pointer
        size: len.value
        type: pointer(_root.is_encrypted, _root.image_clusters)
  keyslot_cluster:
    doc: The plaintext key slot table (one cluster).
    doc-ref: spec/nvbox.md#101-keys [R-enc-2] [R-enc-4]
    seq:
      - id: ks_magic
        contents: NVKS
        doc: '`key.slot_damaged` otherwise.'
      - id: ks_version
        type: u2
        valid: 1
      - id: num_slots
        type: u2
        valid: 8
      - id: cipher
        type: u4
        enum: cipher_id
        valid:
          in-enum: true
      - id: reserved
        size: 20
        valid: '[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]'
      - id: slots
        size: 96
        type: key_slot
        repeat: expr
        repeat-expr: num_slots
        valid:
          expr: |
            _.kind != key_slot_kind::empty or slots.size < 8
            or slots[0].kind != key_slot_kind::empty or slots[1].kind != key_slot_kind::empty
            or slots[2].kind != key_slot_kind::empty or slots[3].kind != key_slot_kind::empty
            or slots[4].kind != key_slot_kind::empty or slots[5].kind != key_slot_kind::empty
            or slots[6].kind != key_slot_kind::empty
        doc: The eighth slot's check says at least one key slot is in use.
        doc-ref: spec/nvbox.md#101-keys [R-enc-4]
      - id: padding
        type: u1
        repeat: eos
        valid: 0
  key_slot:
    doc: One 96-byte key slot; an empty slot is all zero.
    doc-ref: spec/nvbox.md#101-keys [R-enc-3]
    seq:
      - id: kind
        type: u1
        enum: key_slot_kind
        valid:
          in-enum: true
      - id: reserved
        size: 3
        valid: '[0, 0, 0]'
      - id: kdf_time
        type: u4
        valid:
          expr: |
            kind == key_slot_kind::passphrase_argon2id ? (_ >= 1 and _ <= 256) :
            kind == key_slot_kind::passphrase_scrypt ? (_ >= 1 and _ <= 30) : _ == 0
        doc: Argon2id iterations (1..256); scrypt log2 N (1..30); 0 for a key file.
        doc-ref: spec/nvbox.md#101-keys [R-enc-7]
      - id: kdf_memory
        type: u4
        valid:
          expr: |
            kind == key_slot_kind::passphrase_argon2id ? _ <= 4194304 :
            kind == key_slot_kind::passphrase_scrypt ? (_ >= 1 and _ <= 64 and _ <= (33554432 >> kdf_time.as<s4>)) :
            _ == 0
        doc: |
          Argon2id memory in KiB (at most 4 GiB; the lower bound, 8 lanes, is checked on
          `kdf_lanes`); scrypt r (1..64, and 128 * r * 2^kdf_time at most 2^32 bytes); 0 for a
          key file.
        doc-ref: spec/nvbox.md#101-keys [R-enc-7]
      - id: kdf_lanes
        type: u4
        valid:
          expr: |
            kind == key_slot_kind::passphrase_argon2id ? (_ >= 1 and _ <= 64 and kdf_memory >= 8 * _) :
            kind == key_slot_kind::passphrase_scrypt ? (_ >= 1 and _ <= 64) : _ == 0
        doc: Argon2id lanes (1..64, with `kdf_memory >= 8 * lanes`); scrypt p (1..64); 0 for a key file.
        doc-ref: spec/nvbox.md#101-keys [R-enc-7]
      - id: salt
        size: 16
        valid:
          expr: kind != key_slot_kind::empty or _ == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
      - id: nonce
        size: 12
        valid:
          expr: kind != key_slot_kind::empty or _ == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
      - id: wrapped_key
        size: 32
        valid:
          expr: |
            kind != key_slot_kind::empty or _ == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
      - id: wrap_tag
        size: 16
        valid:
          expr: kind != key_slot_kind::empty or _ == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
      - id: reserved2
        type: u4
        valid: 0
enums:
  ext_type:
    0: end_of_extensions
    1:
      id: creator
      doc: UTF-8 name of the creating program, at most 64 bytes.
  incompatible_feature:
    0:
      id: encrypted
      doc: |
        Pointers are 40 bytes; every cluster reached through a pointer except
        the key slot table is AES-256-GCM encrypted.
      doc-ref: spec/nvbox.md#5-feature-bits [R-enc-1]
  cipher_id:
    1: aes_256_gcm
  key_slot_kind:
    0: empty
    1: passphrase_argon2id
    2: passphrase_scrypt
    3: key_file

meta:
  id: nvbox_der
  title: nvbox DER subset (TLV)
  application: nvbox
  license: MIT
  ks-version: '0.11'
  endian: be
  bit-endian: be
doc: |
  One value of the DER subset that nvbox uses for directory bodies and the
  snapshot table (spec/nvbox.md section 9.1): universal SEQUENCE, INTEGER,
  OCTET STRING and UTF8String, context-specific tags [0]..[30] in the
  one-byte form, definite lengths in the short form or the minimal long form
  with 1, 2 or 3 length bytes. Constructed values are parsed recursively;
  primitive ones are left as bytes (`integer` gives an INTEGER's value).

  The nested types `length` and `integer` are reused by nvbox.ksy for the
  typed views of directory records. This spec uses no `_root`/`_parent`, so
  it can be imported (Kaitai 0.11 passes only `_io` to imported types).

  Not checked here: recursion depth (bounded only by the enclosing size),
  UTF-8 well-formedness beyond what the target language's decoder rejects,
  and the "no NUL" rule for UTF8String.
doc-ref:
  - spec/nvbox.md#91-the-der-subset [R-der-1]
seq:
  - id: tag
    type: u1
    enum: tag
    valid:
      expr: |
        _.to_i == 0x30 or _.to_i == 0x02 or _.to_i == 0x04 or _.to_i == 0x0c
        or (_.to_i >= 0x80 and _.to_i <= 0x9e) or (_.to_i >= 0xa0 and _.to_i <= 0xbe)
    doc: Tag byte; any tag outside the subset is `der.malformed`.
  - id: len
    type: length
  - id: body
    size: len.value
    type:
      switch-on: is_constructed
      cases:
        true: constructed
    doc: Contents; a byte array for a primitive value.
instances:
  is_constructed:
    value: (tag.to_i & 0x20) != 0
  is_context_specific:
    value: (tag.to_i & 0xc0) == 0x80
  context_number:
    value: tag.to_i & 0x1f
    doc: The number n of a context-specific tag [n].
types:
  constructed:
    seq:
      - id: elements
        type: nvbox_der
        repeat: eos
  length:
    doc: |
      A definite length: short form 0..127, or 0x81/0x82/0x83 followed by
      1, 2 or 3 big-endian bytes, minimal (never the long form below 128, no
      leading zero byte). 0x80 (indefinite) and 0x84.. are rejected.
    seq:
      - id: first
        type: u1
        valid:
          expr: _ < 0x80 or (_ >= 0x81 and _ <= 0x83)
      - id: len_1
        type: u1
        if: first == 0x81
        valid:
          min: 0x80
      - id: len_2
        type: u2
        if: first == 0x82
        valid:
          min: 0x100
      - id: len_3
        type: b24
        if: first == 0x83
        valid:
          min: 0x10000
    instances:
      value:
        value: 'first < 0x80 ? first : first == 0x81 ? len_1 : first == 0x82 ? len_2 : len_3'
  integer:
    doc: |
      Contents of a non-negative DER INTEGER: 1 to 9 bytes, minimal two's
      complement, value below 2^64. Use with `size:` set to the content length.
    seq:
      - id: byte0
        type: u1
        valid:
          max: 0x7f
        doc: The sign bit is clear (non-negative).
      - id: byte1
        type: u1
        if: _io.size >= 2
        valid:
          expr: byte0 != 0 or _ >= 0x80
        doc: Minimal form, a leading 0x00 only before a byte >= 0x80.
      - id: check_len
        size: 0
        valid:
          expr: _io.size >= 1 and _io.size <= 9 and (_io.size < 9 or byte0 == 0)
    instances:
      value:
        pos: '_io.size == 9 ? 1 : 0'
        type:
          switch-on: _io.size
          cases:
            1: u1
            2: u2
            3: b24
            4: u4
            5: b40
            6: b48
            7: b56
            8: u8
            9: u8
enums:
  tag:
    0x02: integer
    0x04: octet_string
    0x0c: utf8_string
    0x30: sequence
    0x80:
      id: context_0
      doc: "[0] primitive: BlobContent inline, Snapshot metadata."
    0xa1:
      id: context_1_constructed
      doc: "[1] constructed: BlobContent clusters (ClusterMap)."

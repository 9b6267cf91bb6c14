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
  primitive ones are left as bytes (`uint_body` gives an INTEGER's value).

  The nested types `length` and `uint_body` are reused by nvbox.ksy for the
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
    valid:
      expr: |
        _ == 0x30 or _ == 0x02 or _ == 0x04 or _ == 0x0c
        or (_ >= 0x80 and _ <= 0x9e) or (_ >= 0xa0 and _ <= 0xbe)
    doc: |
      Tag byte; any tag outside the subset is `der.malformed`. A plain integer,
      not an enum: an enum naming a few of the 66 allowed tags turns the others
      into null in Java and Lua. 0x02 INTEGER, 0x04 OCTET STRING, 0x0c
      UTF8String, 0x30 SEQUENCE, 0x80 + n primitive [n], 0xa0 + n constructed [n].
  - id: len
    type: length
  - id: body
    size: len.value
    if: not is_constructed
    doc: Contents of a primitive value.
  - id: elements
    size: len.value
    type: constructed
    if: is_constructed
    doc: |
      Contents of a constructed value, parsed. Two fields, not a switch: the
      C++ code of a switch-typed field leaves its pointer uninitialized and
      deletes it when a read fails.
instances:
  is_constructed:
    value: (tag & 0x20) != 0
  is_context_specific:
    value: (tag & 0xc0) == 0x80
  context_number:
    value: tag & 0x1f
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
        value: |
          first < 0x80 ? first.as<u4> : first == 0x81 ? len_1.as<u4> :
          first == 0x82 ? len_2.as<u4> : len_3.as<u4>
        doc: |
          At most 2^24 - 1, so 32 bits hold it in every target; every branch is
          cast, since Nim wants one type in all branches of a conditional.
  uint_body:
    doc: |
      Contents of a non-negative DER INTEGER: 1 to 9 bytes, minimal two's
      complement, value below 2^64. Use with `size:` set to the content length.
      The value is folded byte by byte in a 64-bit type (`.as<u8>`): a switch
      over u1..u8/b24..b56 gets a 32-bit type in Java and C++, and JavaScript
      cannot read bit fields wider than 32 bits. JavaScript holds values up to
      2^53 exactly, like its u8 reads.
    seq:
      - id: byte0
        type: u1
        valid:
          expr: _ <= 0x7f and _io.size <= 9 and (_io.size < 9 or _ == 0)
        doc: |
          The sign bit is clear (non-negative); at most 9 bytes, and a 9-byte
          integer starts with 0x00 (below 2^64).
      - id: byte1
        type: u1
        repeat: expr
        repeat-expr: '_io.size >= 2 ? 1 : 0'
        valid:
          expr: byte0 != 0 or _ >= 0x80
        doc: |
          The second byte, if any (an array of 0 or 1: C# cannot check a
          conditional field with `valid: expr`). Minimal form, a leading 0x00
          only before a byte >= 0x80.
      - id: more
        type: u1
        repeat: eos
        doc: Bytes 2.. (at most 7).
    instances:
      acc2:
        value: '(_io.size >= 2 ? (byte0.as<u8> * 256 + byte1[0].as<u8>).as<u8> : byte0.as<u8>).as<u8>'
      acc3:
        value: '(_io.size >= 3 ? (acc2 * 256 + more[0].as<u8>).as<u8> : acc2).as<u8>'
      acc4:
        value: '(_io.size >= 4 ? (acc3 * 256 + more[1].as<u8>).as<u8> : acc3).as<u8>'
      acc5:
        value: '(_io.size >= 5 ? (acc4 * 256 + more[2].as<u8>).as<u8> : acc4).as<u8>'
      acc6:
        value: '(_io.size >= 6 ? (acc5 * 256 + more[3].as<u8>).as<u8> : acc5).as<u8>'
      acc7:
        value: '(_io.size >= 7 ? (acc6 * 256 + more[4].as<u8>).as<u8> : acc6).as<u8>'
      acc8:
        value: '(_io.size >= 8 ? (acc7 * 256 + more[5].as<u8>).as<u8> : acc7).as<u8>'
      value:
        value: '(_io.size >= 9 ? (acc8 * 256 + more[6].as<u8>).as<u8> : acc8).as<u8>'
        doc: The INTEGER's value.
      below_2_63:
        value: _io.size <= 8
        doc: The value is below 2^63 (minimal form, sign bit clear, at most 8 bytes).
      at_most_2_48:
        value: |
          _io.size <= 6 or (_io.size == 7 and (byte0 == 0 or (byte0 == 1 and byte1[0] == 0
          and more[0] == 0 and more[1] == 0 and more[2] == 0 and more[3] == 0 and more[4] == 0)))
        doc: |
          The value is at most 2^48 (7 bytes: 0x00 and a byte >= 0x80, or
          0x01 00 00 00 00 00 00), without a 64-bit literal.

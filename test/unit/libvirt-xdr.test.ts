// The libvirt RPC codecs: XDR primitives as libvirt uses them, typed parameters, remote_error, framing.
import { describe, expect, it } from 'vitest';
import {
  decodeEvent,
  decodeRemoteError,
  encodePacket,
  encodeRemoteError,
  MAX_PACKET,
  PacketDecoder,
  Proc,
  readDomain,
  readNodeInfo,
  REMOTE_PROGRAM,
  type RemoteError,
  writeDomain,
} from '../../engine/libvirt/protocol.js';
import {
  paramNumber,
  paramValue,
  paramValues,
  type TypedParam,
  XdrReader,
  XdrWriter,
} from '../../engine/libvirt/xdr.js';

const hex = (w: XdrWriter): string => w.toBuffer().toString('hex');

describe('XDR primitives', () => {
  it('encodes ints, unsigned ints, bools and enums as 4 big-endian bytes', () => {
    expect(hex(new XdrWriter().int(-2).uint(0xfffffffe).bool(true).enum(7))).toBe(
      'fffffffe' + 'fffffffe' + '00000001' + '00000007',
    );
    const r = new XdrReader(Buffer.from('fffffffe' + 'fffffffe' + '00000001', 'hex'));
    expect([r.int(), r.uint(), r.bool()]).toEqual([-2, 0xfffffffe, true]);
    expect(() => new XdrWriter().int(2 ** 31)).toThrow(/out of range/);
    expect(() => new XdrWriter().uint(-1)).toThrow(/out of range/);
  });

  it('widens char and short to 4 bytes', () => {
    expect(hex(new XdrWriter().char(-1).uchar(200))).toBe('ffffffff000000c8');
  });

  it('round-trips hyper and uhyper beyond 2^53 without losing precision', () => {
    const big = (1n << 63n) - 1n;
    const ubig = (1n << 64n) - 1n;
    const odd = (1n << 53n) + 1n;
    const w = new XdrWriter().hyper(-big).uhyper(ubig).uhyper(odd);
    expect(w.length).toBe(24);
    const r = new XdrReader(w.toBuffer());
    expect([r.hyper(), r.uhyper(), r.uhyper()]).toEqual([-big, ubig, odd]);
    expect(() => new XdrWriter().uhyper(-1n)).toThrow(/out of range/);
    expect(() => new XdrWriter().hyper(1n << 63n)).toThrow(/out of range/);
  });

  it('round-trips doubles', () => {
    const r = new XdrReader(new XdrWriter().double(-1.5).double(1e300).toBuffer());
    expect([r.double(), r.double()]).toEqual([-1.5, 1e300]);
  });

  it('pads strings and opaques to a multiple of 4 bytes', () => {
    expect(hex(new XdrWriter().string('abcde'))).toBe('00000005' + '6162636465' + '000000');
    expect(hex(new XdrWriter().string('abcd'))).toBe('00000004' + '61626364');
    expect(hex(new XdrWriter().string(''))).toBe('00000000');
    expect(hex(new XdrWriter().opaque(Buffer.from([1, 2])))).toBe('00000002' + '0102' + '0000');
    const r = new XdrReader(Buffer.from('00000005' + '6162636465' + '000000' + '00000001', 'hex'));
    expect(r.string()).toBe('abcde');
    expect(r.int()).toBe(1);
    r.end();
    // UTF-8 length is in bytes.
    const u = new XdrReader(new XdrWriter().string('héllo').toBuffer());
    expect(u.string()).toBe('héllo');
  });

  it('rejects short data, overlong strings and trailing bytes', () => {
    expect(() => new XdrReader(Buffer.from('000000', 'hex')).int()).toThrow(/short XDR data/);
    expect(() => new XdrReader(Buffer.from('00000008616263', 'hex')).string()).toThrow(/short XDR data/);
    expect(() => new XdrReader(Buffer.from('00000003616263', 'hex')).string()).toThrow(/padding/);
    expect(() => new XdrReader(Buffer.from('00500000', 'hex')).string()).toThrow(/exceeds the limit/);
    expect(() => new XdrWriter().string('x'.repeat(9), 8)).toThrow(/exceeds the limit/);
    expect(() =>
      new XdrReader(Buffer.from('000000020000000100000002', 'hex')).array(1, (r) => r.int()),
    ).toThrow(/exceeds the limit/);
    expect(() => new XdrReader(Buffer.from('00001000', 'hex')).array(1 << 20, (r) => r.int())).toThrow(
      /does not fit/,
    );
    const r = new XdrReader(Buffer.from('0000000100000002', 'hex'));
    r.int();
    expect(() => r.end()).toThrow(/trailing/);
    expect(() => new XdrReader(Buffer.from('00000002', 'hex')).bool()).toThrow(/bad XDR bool/);
  });

  it('encodes optional values as a 0/1 flag then the value', () => {
    expect(hex(new XdrWriter().optional('ab', (w, v) => w.string(v)))).toBe(
      '00000001' + '00000002' + '61620000',
    );
    expect(hex(new XdrWriter().optional(null, (w, v: string) => w.string(v)))).toBe('00000000');
    const r = new XdrReader(Buffer.from('00000001' + '00000002' + '61620000' + '00000000', 'hex'));
    expect(r.optional((x) => x.string())).toBe('ab');
    expect(r.optional((x) => x.string())).toBeNull();
    expect(() => new XdrReader(Buffer.from('00000002', 'hex')).optional((x) => x.int())).toThrow(/optional/);
  });

  it('encodes fixed and variable arrays', () => {
    expect(hex(new XdrWriter().fixedArray([1, 2], 2, (w, v) => w.int(v)))).toBe('0000000100000002');
    expect(hex(new XdrWriter().array([1, 2], 5, (w, v) => w.int(v)))).toBe('00000002' + '0000000100000002');
    expect(() => new XdrWriter().array([1, 2, 3], 2, (w, v) => w.int(v))).toThrow(/limit of 2/);
    expect(() => new XdrWriter().fixedArray([1], 2, (w, v) => w.int(v))).toThrow(/2 items/);
  });

  it('writes a uuid as 16 raw bytes and reads it as lower-case 8-4-4-4-12', () => {
    const uuid = '2E66ED42-2246-40F4-929B-CCB570084880';
    const b = new XdrWriter().uuid(uuid).toBuffer();
    expect(b.toString('hex')).toBe('2e66ed42224640f4929bccb570084880');
    expect(new XdrReader(b).uuid()).toBe(uuid.toLowerCase());
    expect(() => new XdrWriter().uuid('not-a-uuid')).toThrow(/not a uuid/);
  });

  it('round-trips remote_nonnull_domain', () => {
    const dom = { name: 'vm1', uuid: '00112233-4455-6677-8899-aabbccddeeff', id: -1 };
    const w = new XdrWriter();
    writeDomain(w, dom);
    expect(w.toBuffer().toString('hex')).toBe(
      '00000003' + '766d3100' + '00112233445566778899aabbccddeeff' + 'ffffffff',
    );
    expect(readDomain(new XdrReader(w.toBuffer()))).toEqual(dom);
  });
});

describe('typed parameters', () => {
  const params: TypedParam[] = [
    { field: 'i', type: 'int', value: -5 },
    { field: 'u', type: 'uint', value: 4000000000 },
    { field: 'll', type: 'llong', value: -(1n << 60n) },
    { field: 'ull', type: 'ullong', value: (1n << 64n) - 1n },
    { field: 'd', type: 'double', value: 0.25 },
    { field: 'b', type: 'boolean', value: true },
    { field: 'migrate_disks', type: 'string', value: 'vda' },
    { field: 'migrate_disks', type: 'string', value: 'vdb' },
  ];

  it('round-trips every type and repeated (multi-value) entries', () => {
    const buf = new XdrWriter().typedParams(params).toBuffer();
    const back = new XdrReader(buf).typedParams();
    expect(back).toEqual(params);
    expect(paramValues(back, 'migrate_disks')).toEqual(['vda', 'vdb']);
    expect(paramValue(back, 'ull')).toBe((1n << 64n) - 1n);
    expect(paramNumber(back, 'u')).toBe(4000000000);
    expect(paramValue(back, 'missing')).toBeUndefined();
  });

  it('uses the wire layout field, i32 type, value', () => {
    const w = new XdrWriter().typedParams([
      { field: 'bandwidth', type: 'ullong', value: 100n },
      { field: 'x', type: 'boolean', value: false },
    ]);
    expect(w.toBuffer().toString('hex')).toBe(
      '00000002' +
        '00000009' +
        Buffer.from('bandwidth').toString('hex') +
        '000000' +
        '00000004' +
        '0000000000000064' +
        '00000001' +
        '78000000' +
        '00000006' +
        '00000000',
    );
  });

  it('rejects a value of the wrong kind, an unknown type and too many entries', () => {
    expect(() => new XdrWriter().typedParams([{ field: 'a', type: 'int', value: 'x' }])).toThrow(/integer/);
    expect(() => new XdrWriter().typedParams([{ field: 'a', type: 'string', value: 1 }])).toThrow(/string/);
    const bad = Buffer.from('00000001' + '00000001' + '61000000' + '00000009' + '00000000', 'hex');
    expect(() => new XdrReader(bad).typedParams()).toThrow(/unknown type 9/);
    const many = Array.from({ length: 65 }, (_, i): TypedParam => ({
      field: `f${i}`,
      type: 'int',
      value: i,
    }));
    expect(() => new XdrWriter().typedParams(many)).toThrow(/limit of 64/);
  });
});

describe('libvirt structs', () => {
  it('reads NODE_GET_INFO with its 32 four-byte chars (128 bytes of model)', () => {
    const w = new XdrWriter();
    const model = 'x86_64';
    for (let i = 0; i < 32; i++) w.char(i < model.length ? model.charCodeAt(i) : 0);
    expect(w.length).toBe(128);
    w.uhyper(6645536n).int(2).int(1996).int(1).int(1).int(2).int(1);
    const r = new XdrReader(w.toBuffer());
    expect(readNodeInfo(r)).toEqual({
      model: 'x86_64',
      memoryKiB: 6645536n,
      cpus: 2,
      mhz: 1996,
      nodes: 1,
      sockets: 1,
      cores: 2,
      threads: 1,
    });
    r.end();
  });

  it('decodes the full remote_error, optional fields present and absent', () => {
    const full: RemoteError = {
      code: 93,
      domain: 10,
      message: 'migration finished',
      level: 2,
      dom: { name: 'vm1', uuid: '00112233-4455-6677-8899-aabbccddeeff', id: 3 },
      str1: 'a',
      str2: null,
      str3: 'c',
      int1: -1,
      int2: 7,
      net: { name: 'default', uuid: 'ffeeddcc-bbaa-9988-7766-554433221100' },
    };
    expect(decodeRemoteError(encodeRemoteError(full))).toEqual(full);
    const bare: RemoteError = {
      ...full,
      message: null,
      dom: null,
      str1: null,
      str3: null,
      net: null,
    };
    const buf = encodeRemoteError(bare);
    // code, domain, flag, level, flag, 3 flags, int1, int2, flag: 11 words.
    expect(buf.length).toBe(44);
    expect(decodeRemoteError(buf)).toEqual(bare);
  });

  it('decodes the routed events', () => {
    const dom = { name: 'vm', uuid: '00112233-4455-6677-8899-aabbccddeeff', id: 1 };
    const w = new XdrWriter().int(4);
    writeDomain(w, dom);
    w.int(5).int(1);
    expect(decodeEvent(Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE, w.toBuffer())).toEqual({
      kind: 'lifecycle',
      proc: 318,
      callbackID: 4,
      dom,
      event: 5,
      detail: 1,
    });
    const j = new XdrWriter().int(2);
    writeDomain(j, dom);
    j.typedParams([{ field: 'downtime', type: 'ullong', value: 12n }]);
    const ev = decodeEvent(Proc.DOMAIN_EVENT_CALLBACK_JOB_COMPLETED, j.toBuffer());
    expect(ev).toMatchObject({
      kind: 'job-completed',
      callbackID: 2,
      params: [{ field: 'downtime', value: 12n }],
    });
    const b = new XdrWriter().int(3);
    writeDomain(b, dom);
    b.string('vda').int(2).int(3);
    expect(decodeEvent(Proc.DOMAIN_EVENT_BLOCK_JOB_2, b.toBuffer())).toMatchObject({
      kind: 'block-job',
      dst: 'vda',
      type: 2,
      status: 3,
    });
    const m = new XdrWriter().int(9);
    writeDomain(m, dom);
    m.int(4);
    expect(decodeEvent(Proc.DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION, m.toBuffer())).toMatchObject({
      kind: 'migration-iteration',
      iteration: 4,
    });
    expect(decodeEvent(999, Buffer.from('00000007', 'hex'))).toMatchObject({ kind: 'other', callbackID: 7 });
  });
});

describe('packet framing', () => {
  const header = (serial: number, proc: number) => ({
    prog: REMOTE_PROGRAM,
    vers: 1,
    proc,
    type: 1,
    serial,
    status: 0,
  });

  it('writes the length word, the 6 header words and the payload', () => {
    const p = encodePacket(header(7, 59), Buffer.from('00000000', 'hex'));
    expect(p.toString('hex')).toBe(
      '00000020' + '20008086' + '00000001' + '0000003b' + '00000001' + '00000007' + '00000000' + '00000000',
    );
  });

  it('reassembles packets split at every possible boundary', () => {
    const packets = [
      encodePacket(header(1, 59), new XdrWriter().string('host-one').toBuffer()),
      encodePacket(header(2, 157), new XdrWriter().uhyper(9000000n).toBuffer()),
      encodePacket(header(3, 2)),
    ];
    const stream = Buffer.concat(packets);
    for (let a = 0; a <= stream.length; a++) {
      for (const b of [a, Math.min(stream.length, a + 1), Math.min(stream.length, a + 29)]) {
        const d = new PacketDecoder();
        const out = [
          ...d.push(stream.subarray(0, a)),
          ...d.push(stream.subarray(a, b)),
          ...d.push(stream.subarray(b)),
        ];
        expect(out.map((p) => p.serial)).toEqual([1, 2, 3]);
        expect(new XdrReader(out[0]!.payload).string()).toBe('host-one');
        expect(out[2]!.payload.length).toBe(0);
        expect(d.pending).toBe(0);
      }
    }
    // One byte at a time.
    const d = new PacketDecoder();
    const out = [...stream].flatMap((byte) => d.push(Buffer.from([byte])));
    expect(out.map((p) => p.proc)).toEqual([59, 157, 2]);
  });

  it('rejects a garbage length as not libvirt RPC, showing what came', () => {
    expect(() => new PacketDecoder().push(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'))).toThrow(
      /not a libvirt RPC stream: packet length \d+ \(bytes "SSH-2.0/,
    );
    const tooShort = Buffer.alloc(4);
    tooShort.writeUInt32BE(27);
    expect(() => new PacketDecoder().push(tooShort)).toThrow(/packet length 27/);
    const tooLong = Buffer.alloc(4);
    tooLong.writeUInt32BE(MAX_PACKET + 1);
    expect(() => new PacketDecoder().push(tooLong)).toThrow(/not a libvirt RPC stream/);
    const maxOk = Buffer.alloc(4);
    maxOk.writeUInt32BE(MAX_PACKET);
    expect(new PacketDecoder().push(maxOk)).toEqual([]);
  });
});

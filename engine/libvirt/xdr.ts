// XDR (RFC 4506) as libvirt's remote protocol uses it: big-endian, everything padded to 4 bytes.
// libvirt quirks worth knowing: char/uchar/short/ushort are widened to 4 bytes (rpcgen does that), so
// NODE_GET_INFO's `char model[32]` is 128 bytes; a uuid is 16 raw bytes with no length word; `T *` is a
// 0/1 word followed by T. Typed parameters are remote_typed_param (field name + a union on its type).

/** libvirt's REMOTE_STRING_MAX (also the cookie / XML limit). */
export const XDR_STRING_MAX = 4 * 1024 * 1024;
/** libvirt's REMOTE_*_PARAMETERS_MAX / REMOTE_DOMAIN_JOB_STATS_MAX. */
export const TYPED_PARAMS_MAX = 64;

/** Malformed or out-of-range XDR data; the caller turns it into a connection or protocol error. */
export class XdrError extends Error {
  override readonly name = 'XdrError';
}

const pad4 = (n: number): number => (4 - (n % 4)) % 4;

export class XdrWriter {
  private chunks: Buffer[] = [];
  private cur = Buffer.alloc(256);
  private pos = 0;

  private ensure(n: number): void {
    if (this.pos + n <= this.cur.length) return;
    this.chunks.push(this.cur.subarray(0, this.pos));
    this.cur = Buffer.alloc(Math.max(256, n));
    this.pos = 0;
  }

  int(v: number): this {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff)
      throw new XdrError(`int out of range: ${v}`);
    this.ensure(4);
    this.cur.writeInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }

  uint(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff)
      throw new XdrError(`unsigned int out of range: ${v}`);
    this.ensure(4);
    this.cur.writeUInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }

  hyper(v: bigint | number): this {
    const b = BigInt(v);
    if (b < -(1n << 63n) || b >= 1n << 63n) throw new XdrError(`hyper out of range: ${b}`);
    this.ensure(8);
    this.cur.writeBigInt64BE(b, this.pos);
    this.pos += 8;
    return this;
  }

  uhyper(v: bigint | number): this {
    const b = BigInt(v);
    if (b < 0n || b >= 1n << 64n) throw new XdrError(`unsigned hyper out of range: ${b}`);
    this.ensure(8);
    this.cur.writeBigUInt64BE(b, this.pos);
    this.pos += 8;
    return this;
  }

  double(v: number): this {
    this.ensure(8);
    this.cur.writeDoubleBE(v, this.pos);
    this.pos += 8;
    return this;
  }

  bool(v: boolean): this {
    return this.int(v ? 1 : 0);
  }

  enum(v: number): this {
    return this.int(v);
  }

  /** char / short: XDR has no types narrower than 4 bytes. */
  char(v: number): this {
    return this.int(v);
  }

  uchar(v: number): this {
    return this.uint(v);
  }

  private raw(b: Buffer): this {
    this.ensure(b.length);
    b.copy(this.cur, this.pos);
    this.pos += b.length;
    return this;
  }

  private padding(n: number): this {
    const p = pad4(n);
    if (p) this.raw(Buffer.alloc(p));
    return this;
  }

  opaqueFixed(b: Buffer, len: number): this {
    if (b.length !== len) throw new XdrError(`fixed opaque must be ${len} bytes, got ${b.length}`);
    return this.raw(b).padding(len);
  }

  opaque(b: Buffer, max = XDR_STRING_MAX): this {
    if (b.length > max) throw new XdrError(`opaque of ${b.length} bytes exceeds the limit of ${max}`);
    return this.uint(b.length).raw(b).padding(b.length);
  }

  string(s: string, max = XDR_STRING_MAX): this {
    const b = Buffer.from(s, 'utf8');
    if (b.length > max) throw new XdrError(`string of ${b.length} bytes exceeds the limit of ${max}`);
    return this.uint(b.length).raw(b).padding(b.length);
  }

  uuid(u: string | Buffer): this {
    return this.opaqueFixed(typeof u === 'string' ? uuidToBytes(u) : u, 16);
  }

  optional<T>(v: T | null | undefined, write: (w: this, v: T) => void): this {
    if (v === null || v === undefined) return this.uint(0);
    this.uint(1);
    write(this, v);
    return this;
  }

  fixedArray<T>(items: readonly T[], len: number, write: (w: this, v: T) => void): this {
    if (items.length !== len) throw new XdrError(`fixed array must have ${len} items, got ${items.length}`);
    for (const it of items) write(this, it);
    return this;
  }

  array<T>(items: readonly T[], max: number, write: (w: this, v: T) => void): this {
    if (items.length > max) throw new XdrError(`array of ${items.length} items exceeds the limit of ${max}`);
    this.uint(items.length);
    for (const it of items) write(this, it);
    return this;
  }

  typedParams(params: readonly TypedParam[], max = TYPED_PARAMS_MAX): this {
    return this.array(params, max, (w, p) => writeTypedParam(w, p));
  }

  get length(): number {
    return this.chunks.reduce((n, c) => n + c.length, 0) + this.pos;
  }

  toBuffer(): Buffer {
    return Buffer.concat([...this.chunks, this.cur.subarray(0, this.pos)]);
  }
}

export class XdrReader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, what: string): void {
    if (this.pos + n > this.buf.length)
      throw new XdrError(
        `short XDR data: ${what} needs ${n} bytes at offset ${this.pos}, ${this.remaining} left`,
      );
  }

  int(): number {
    this.need(4, 'int');
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  uint(): number {
    this.need(4, 'unsigned int');
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  hyper(): bigint {
    this.need(8, 'hyper');
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  uhyper(): bigint {
    this.need(8, 'unsigned hyper');
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  double(): number {
    this.need(8, 'double');
    const v = this.buf.readDoubleBE(this.pos);
    this.pos += 8;
    return v;
  }

  bool(): boolean {
    const v = this.int();
    if (v !== 0 && v !== 1) throw new XdrError(`bad XDR bool ${v} at offset ${this.pos - 4}`);
    return v === 1;
  }

  enum(): number {
    return this.int();
  }

  char(): number {
    return this.int();
  }

  uchar(): number {
    return this.uint();
  }

  private skipPadding(n: number): void {
    const p = pad4(n);
    this.need(p, 'padding');
    this.pos += p;
  }

  opaqueFixed(len: number): Buffer {
    this.need(len, `opaque[${len}]`);
    const b = Buffer.from(this.buf.subarray(this.pos, this.pos + len));
    this.pos += len;
    this.skipPadding(len);
    return b;
  }

  opaque(max = XDR_STRING_MAX): Buffer {
    const len = this.uint();
    if (len > max) throw new XdrError(`opaque length ${len} exceeds the limit of ${max}`);
    return this.opaqueFixed(len);
  }

  string(max = XDR_STRING_MAX): string {
    const len = this.uint();
    if (len > max) throw new XdrError(`string length ${len} exceeds the limit of ${max}`);
    this.need(len, `string<${len}>`);
    const s = this.buf.toString('utf8', this.pos, this.pos + len);
    this.pos += len;
    this.skipPadding(len);
    return s;
  }

  /** A uuid as libvirt's string form: 8-4-4-4-12 lower-case hex. */
  uuid(): string {
    return bytesToUuid(this.opaqueFixed(16));
  }

  optional<T>(read: (r: this) => T): T | null {
    const flag = this.uint();
    if (flag === 0) return null;
    if (flag !== 1) throw new XdrError(`bad optional-data flag ${flag} at offset ${this.pos - 4}`);
    return read(this);
  }

  fixedArray<T>(len: number, read: (r: this) => T): T[] {
    const out: T[] = [];
    for (let i = 0; i < len; i++) out.push(read(this));
    return out;
  }

  array<T>(max: number, read: (r: this) => T): T[] {
    const n = this.uint();
    if (n > max) throw new XdrError(`array of ${n} items exceeds the limit of ${max}`);
    // Each item takes at least 4 bytes: a count larger than what is left is garbage, not a huge alloc.
    if (n * 4 > this.remaining)
      throw new XdrError(`array of ${n} items does not fit in ${this.remaining} bytes`);
    return this.fixedArray(n, read);
  }

  typedParams(max = TYPED_PARAMS_MAX): TypedParam[] {
    return this.array(max, (r) => readTypedParam(r));
  }

  /** Fails when bytes are left over: a reply longer than its struct means we decoded the wrong shape. */
  end(): void {
    if (this.remaining !== 0) throw new XdrError(`${this.remaining} unexpected trailing bytes in XDR data`);
  }
}

// --- uuids -----------------------------------------------------------------------------

const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

export function uuidToBytes(u: string): Buffer {
  if (!UUID_RE.test(u)) throw new XdrError(`not a uuid: ${JSON.stringify(u)}`);
  return Buffer.from(u.replace(/-/g, ''), 'hex');
}

export function bytesToUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

// --- typed parameters ------------------------------------------------------------------

export type TypedParamType = 'int' | 'uint' | 'llong' | 'ullong' | 'double' | 'boolean' | 'string';

/** One virTypedParameter. Multi-value fields (e.g. migrate_disks) are several entries with one field. */
export interface TypedParam {
  field: string;
  type: TypedParamType;
  value: number | bigint | boolean | string;
}

/** VIR_TYPED_PARAM_* discriminants on the wire. */
export const TYPED_PARAM_CODES: Record<TypedParamType, number> = {
  int: 1,
  uint: 2,
  llong: 3,
  ullong: 4,
  double: 5,
  boolean: 6,
  string: 7,
};
const TYPED_PARAM_NAMES = Object.fromEntries(
  Object.entries(TYPED_PARAM_CODES).map(([k, v]) => [v, k as TypedParamType]),
) as Record<number, TypedParamType>;

/** VIR_TYPED_PARAM_FIELD_LENGTH (80) minus the NUL. */
const FIELD_MAX = 79;

function expect<T>(p: TypedParam, kind: string, ok: (v: unknown) => v is T): T {
  if (!ok(p.value)) throw new XdrError(`typed parameter ${p.field} (${p.type}) needs a ${kind} value`);
  return p.value;
}
const isNum = (v: unknown): v is number => typeof v === 'number';
const isIntish = (v: unknown): v is number | bigint => typeof v === 'bigint' || Number.isInteger(v);

export function writeTypedParam(w: XdrWriter, p: TypedParam): void {
  const code = TYPED_PARAM_CODES[p.type];
  if (code === undefined) throw new XdrError(`unknown typed parameter type ${String(p.type)}`);
  w.string(p.field, FIELD_MAX).int(code);
  switch (p.type) {
    case 'int':
      w.int(Number(expect(p, 'integer', isIntish)));
      break;
    case 'uint':
      w.uint(Number(expect(p, 'integer', isIntish)));
      break;
    case 'llong':
      w.hyper(expect(p, 'integer', isIntish));
      break;
    case 'ullong':
      w.uhyper(expect(p, 'integer', isIntish));
      break;
    case 'double':
      w.double(expect(p, 'number', isNum));
      break;
    case 'boolean':
      w.int(expect(p, 'boolean', (v): v is boolean => typeof v === 'boolean') ? 1 : 0);
      break;
    case 'string':
      w.string(expect(p, 'string', (v): v is string => typeof v === 'string'));
      break;
  }
}

export function readTypedParam(r: XdrReader): TypedParam {
  const field = r.string(FIELD_MAX);
  const code = r.int();
  const type = TYPED_PARAM_NAMES[code];
  switch (type) {
    case 'int':
      return { field, type, value: r.int() };
    case 'uint':
      return { field, type, value: r.uint() };
    case 'llong':
      return { field, type, value: r.hyper() };
    case 'ullong':
      return { field, type, value: r.uhyper() };
    case 'double':
      return { field, type, value: r.double() };
    case 'boolean':
      return { field, type, value: r.int() !== 0 };
    case 'string':
      return { field, type, value: r.string() };
    default:
      throw new XdrError(`typed parameter ${field} has unknown type ${code}`);
  }
}

/** The first value of `field`, or undefined. */
export function paramValue(params: readonly TypedParam[], field: string): TypedParam['value'] | undefined {
  return params.find((p) => p.field === field)?.value;
}

/** Every value of a multi-value `field` (e.g. migrate_disks), in order. */
export function paramValues(params: readonly TypedParam[], field: string): TypedParam['value'][] {
  return params.filter((p) => p.field === field).map((p) => p.value);
}

/** A numeric field as a number (bigints above 2^53 lose precision; fine for progress display). */
export function paramNumber(params: readonly TypedParam[], field: string): number | undefined {
  const v = paramValue(params, field);
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'boolean') return v ? 1 : 0;
  return undefined;
}

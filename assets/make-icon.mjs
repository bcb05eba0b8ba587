// Generates assets/icon.png (1024x1024 RGBA) with nothing but node:zlib, so the app icon
// is reproducible from source without image tools:  node assets/make-icon.mjs
import { writeFileSync } from 'node:fs';
import { deflateSync } from 'node:zlib';

const SIZE = 1024;
const SS = 4; // supersampling per axis, for anti-aliased edges

// --- palette -------------------------------------------------------------------------
const SKY_TOP = [32, 164, 214];
const SKY_BOTTOM = [10, 64, 140];
const WHITE = [255, 255, 255];
const AMBER = [255, 183, 3];
const NAVY = [12, 52, 110];

// --- shapes: (x, y) => boolean --------------------------------------------------------
const roundedRect =
  (x0, y0, x1, y1, r = 0) =>
  (x, y) => {
    if (x < x0 || x > x1 || y < y0 || y > y1) return false;
    const cx = Math.min(Math.max(x, x0 + r), x1 - r);
    const cy = Math.min(Math.max(y, y0 + r), y1 - r);
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r;
  };

const circle = (cx, cy, r) => (x, y) => (x - cx) ** 2 + (y - cy) ** 2 <= r * r;

// Even-odd rule point-in-polygon.
const polygon = (points) => (x, y) => {
  let inside = false;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    const [xi, yi] = points[i];
    const [xj, yj] = points[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
};

const wave = (baseY, amplitude, wavelength, phase, thickness) => (x, y) => {
  const crest = baseY + amplitude * Math.sin((2 * Math.PI * x) / wavelength + phase);
  return y >= crest && y <= crest + thickness;
};

const and = (a, b) => (x, y) => a(x, y) && b(x, y);

// --- scene, painted back to front -------------------------------------------------------
const tile = roundedRect(40, 40, 984, 984, 200);
const sky = (_x, y) => {
  const t = Math.min(Math.max((y - 40) / 944, 0), 1);
  return SKY_TOP.map((c, i) => c + (SKY_BOTTOM[i] - c) * t);
};

const layers = [
  { shape: tile, color: sky, alpha: 1 },
  // Migration arrow: the VM being ferried across to another host.
  { shape: roundedRect(250, 206, 660, 250, 22), color: () => AMBER, alpha: 1 },
  {
    shape: polygon([
      [640, 148],
      [790, 228],
      [640, 308],
    ]),
    color: () => AMBER,
    alpha: 1,
  },
  // Ferry: funnel, bridge, cabin deck, hull.
  { shape: roundedRect(520, 330, 570, 410, 6), color: () => WHITE, alpha: 1 },
  { shape: roundedRect(520, 330, 570, 356, 6), color: () => AMBER, alpha: 1 },
  { shape: roundedRect(380, 400, 600, 500, 18), color: () => WHITE, alpha: 1 },
  { shape: roundedRect(404, 424, 576, 466, 10), color: () => NAVY, alpha: 1 },
  { shape: roundedRect(300, 490, 700, 610, 20), color: () => WHITE, alpha: 1 },
  ...[360, 430, 500, 570, 640].map((cx) => ({ shape: circle(cx, 550, 20), color: () => NAVY, alpha: 1 })),
  {
    shape: polygon([
      [210, 600],
      [830, 600],
      [730, 732],
      [290, 732],
    ]),
    color: () => WHITE,
    alpha: 1,
  },
  // Stripe corners lie on the hull's sloped sides.
  {
    shape: polygon([
      [238, 646],
      [796, 646],
      [783, 662],
      [248, 662],
    ]),
    color: () => AMBER,
    alpha: 1,
  },
  // Water.
  { shape: and(tile, wave(756, 16, 180, 0, 26)), color: () => WHITE, alpha: 0.9 },
  { shape: and(tile, wave(830, 16, 180, Math.PI, 26)), color: () => WHITE, alpha: 0.55 },
];

// --- rasterise --------------------------------------------------------------------------
const rgba = Buffer.alloc(SIZE * SIZE * 4);
for (let py = 0; py < SIZE; py++) {
  for (let px = 0; px < SIZE; px++) {
    let r = 0;
    let g = 0;
    let b = 0;
    let a = 0;
    for (let sy = 0; sy < SS; sy++) {
      for (let sx = 0; sx < SS; sx++) {
        const x = px + (sx + 0.5) / SS;
        const y = py + (sy + 0.5) / SS;
        // Straight "over" compositing of each layer onto a transparent background.
        let cr = 0;
        let cg = 0;
        let cb = 0;
        let ca = 0;
        for (const layer of layers) {
          if (!layer.shape(x, y)) continue;
          const [lr, lg, lb] = layer.color(x, y);
          const la = layer.alpha;
          const outA = la + ca * (1 - la);
          cr = (lr * la + cr * ca * (1 - la)) / outA;
          cg = (lg * la + cg * ca * (1 - la)) / outA;
          cb = (lb * la + cb * ca * (1 - la)) / outA;
          ca = outA;
        }
        // Accumulate premultiplied so transparent samples don't darken edges.
        r += cr * ca;
        g += cg * ca;
        b += cb * ca;
        a += ca;
      }
    }
    const o = (py * SIZE + px) * 4;
    if (a > 0) {
      rgba[o] = Math.round(r / a);
      rgba[o + 1] = Math.round(g / a);
      rgba[o + 2] = Math.round(b / a);
    }
    rgba[o + 3] = Math.round((a / (SS * SS)) * 255);
  }
}

// --- encode PNG -------------------------------------------------------------------------
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc32 = (buf) => {
  let c = 0xffffffff;
  for (const byte of buf) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
};
const chunk = (type, data) => {
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const out = Buffer.alloc(body.length + 8);
  out.writeUInt32BE(data.length, 0);
  body.copy(out, 4);
  out.writeUInt32BE(crc32(body), body.length + 4);
  return out;
};

const ihdr = Buffer.alloc(13);
ihdr.writeUInt32BE(SIZE, 0);
ihdr.writeUInt32BE(SIZE, 4);
ihdr[8] = 8; // bit depth
ihdr[9] = 6; // colour type RGBA
// bytes 10-12: compression, filter, interlace = 0

// Each scanline is prefixed with filter type 0 (none).
const raw = Buffer.alloc(SIZE * (SIZE * 4 + 1));
for (let y = 0; y < SIZE; y++) rgba.copy(raw, y * (SIZE * 4 + 1) + 1, y * SIZE * 4, (y + 1) * SIZE * 4);

const png = Buffer.concat([
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
  chunk('IHDR', ihdr),
  chunk('IDAT', deflateSync(raw, { level: 9 })),
  chunk('IEND', Buffer.alloc(0)),
]);

const target = new URL('./icon.png', import.meta.url);
writeFileSync(target, png);
console.log(`wrote ${target.pathname} (${png.length} bytes)`);

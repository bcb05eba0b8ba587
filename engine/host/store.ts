// Files that several Ferry processes (CLI calls, web mode, desktop app) share: written atomically
// (temp file + fsync + rename) and changed under inter-process locks, so no reader sees half a file.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import lockfile from 'proper-lockfile';
import type { z } from 'zod';
import { FerryError } from '../api/errors.js';

/** FERRY_HOME, or the OS's per-user application-data folder. */
export function ferryHome(): string {
  const env = process.env.FERRY_HOME;
  if (env) return path.resolve(env);
  switch (process.platform) {
    case 'darwin':
      return path.join(os.homedir(), 'Library', 'Application Support', 'Ferry');
    case 'win32':
      return path.join(process.env.APPDATA ?? path.join(os.homedir(), 'AppData', 'Roaming'), 'Ferry');
    default:
      return path.join(process.env.XDG_DATA_HOME ?? path.join(os.homedir(), '.local', 'share'), 'ferry');
  }
}

/**
 * A short folder for unix sockets of one state directory. Socket paths are limited to 108 bytes, and
 * FERRY_HOME can be long, so sockets live under `$XDG_RUNTIME_DIR/ferry/` (the user's own, private
 * runtime folder) when there is one, else under the temp folder's `ferry-UID/`, keyed by a hash of the
 * state dir. Before QEMU is started there, ensureSocketDir makes sure the folders are this user's alone.
 */
export function socketDir(stateDir: string): string {
  const hash = crypto.createHash('sha256').update(path.resolve(stateDir)).digest('hex').slice(0, 10);
  return path.join(socketBase(), hash);
}

/** The folder every socketDir lies in. */
export function socketBase(): string {
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'ferry');
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  return path.join(os.tmpdir(), `ferry-${uid}`);
}

/**
 * Makes (mode 0700) or checks one private folder, never following a symlink: a folder in a shared
 * place like /tmp that another user made first, or that others may write, could let them put their
 * own socket where Ferry (or QEMU) expects its own. Refused with a clear error rather than used.
 */
export async function ensurePrivateDir(dir: string): Promise<void> {
  try {
    await fs.promises.mkdir(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const st = await fs.promises.lstat(dir);
  const uid = typeof process.getuid === 'function' ? process.getuid() : null;
  const refuse = (why: string): never => {
    throw new FerryError(
      'unsafe-path',
      `refusing to use ${dir} for QEMU's sockets: ${why}`,
      `remove it (or fix it: chown ${uid ?? 'YOU'} ${dir} && chmod 700 ${dir}) and try again`,
    );
  };
  if (st.isSymbolicLink()) refuse('it is a symbolic link');
  if (!st.isDirectory()) refuse('it is not a folder');
  if (process.platform === 'win32') return; // no POSIX owner and mode bits to check there
  if (uid !== null && st.uid !== uid) refuse(`it belongs to another user (uid ${st.uid})`);
  // Group or others: either way someone else could replace what Ferry puts there.
  if ((st.mode & 0o022) !== 0)
    refuse(`others may write to it (mode ${(st.mode & 0o777).toString(8).padStart(3, '0')})`);
  // Ours and not writable by others: make it private as well (an older Ferry may have made it 0755).
  if ((st.mode & 0o777) !== 0o700) await fs.promises.chmod(dir, 0o700);
}

/** The socket folder of a state dir, made or checked (see ensurePrivateDir) before it is used. */
export async function ensureSocketDir(stateDir: string): Promise<string> {
  const base = socketBase();
  if (process.env.XDG_RUNTIME_DIR && path.isAbsolute(process.env.XDG_RUNTIME_DIR)) {
    await fs.promises.mkdir(path.dirname(base), { recursive: true, mode: 0o700 });
  }
  await ensurePrivateDir(base);
  const dir = socketDir(stateDir);
  await ensurePrivateDir(dir);
  return dir;
}

/** Ferry's state is the user's own: folders it makes are 0700, files 0600 (see writeJsonAtomic). */
export async function ensureDir(dir: string, mode = 0o700): Promise<void> {
  await fs.promises.mkdir(dir, { recursive: true, mode });
}

export async function writeJsonAtomic(file: string, data: unknown): Promise<void> {
  await ensureDir(path.dirname(file));
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
  const fh = await fs.promises.open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(JSON.stringify(data, null, 2) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.promises.rename(tmp, file);
}

/**
 * Creates a new, empty file at `file` (mode 0600), refusing (`bad-input`) when anything is there
 * already, a file, a folder or a symbolic link, dangling or not: O_CREAT|O_EXCL never follows a link.
 * A disk image Ferry makes is created this way first, then filled by qemu-img (which would overwrite
 * whatever it finds, through a link too).
 */
export async function createExclusive(file: string): Promise<void> {
  let fh: fs.promises.FileHandle;
  try {
    const { O_CREAT, O_EXCL, O_WRONLY, O_NOFOLLOW } = fs.constants;
    fh = await fs.promises.open(file, O_CREAT | O_EXCL | O_WRONLY | (O_NOFOLLOW ?? 0), 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST' || (err as NodeJS.ErrnoException).code === 'ELOOP')
      throw new FerryError(
        'bad-input',
        `${file} already exists (as a file, folder or link); Ferry never overwrites it: choose another path or remove it`,
      );
    throw err;
  }
  await fh.close();
}

/** Reads and validates a JSON file; null when it does not exist. A corrupt file is an error, never ignored. */
export async function readJson<S extends z.ZodType>(file: string, schema: S): Promise<z.infer<S> | null> {
  let text: string;
  try {
    text = await fs.promises.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new FerryError('state-corrupt', `${file} is not valid JSON: ${(err as Error).message}`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new FerryError('state-corrupt', `${file} does not match its schema: ${parsed.error.message}`);
  }
  return parsed.data;
}

/**
 * Runs fn while holding an inter-process lock named by `lockPath` (a directory lock, so it works on
 * network file systems too). A holder that died leaves a stale lock that is taken over after 10 s.
 */
export async function withLock<T>(lockPath: string, fn: () => Promise<T>): Promise<T> {
  await ensureDir(path.dirname(lockPath));
  let release: () => Promise<void>;
  try {
    release = await lockfile.lock(lockPath, {
      realpath: false,
      stale: 10_000,
      update: 2_000,
      retries: { retries: 200, factor: 1.2, minTimeout: 10, maxTimeout: 250 },
    });
  } catch (err) {
    throw new FerryError('locked', `could not lock ${lockPath}: ${(err as Error).message}`);
  }
  try {
    return await fn();
  } finally {
    await release().catch(() => undefined);
  }
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fs.promises.access(p);
    return true;
  } catch {
    return false;
  }
}

let root: string | null = null;
/** The folder Ferry is installed in (holds package.json and assets/), from source or from dist/. */
export function packageRoot(): string {
  if (root) return root;
  let dir = path.dirname(new URL(import.meta.url).pathname);
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'assets'))) {
      root = dir;
      return dir;
    }
    const up = path.dirname(dir);
    if (up === dir)
      throw new FerryError('internal', "cannot find Ferry's install folder (package.json + assets/)");
    dir = up;
  }
}

/** Ferry's own read-only lab guest image: every host has it, like firmware. */
export function labGuestImage(): string {
  const file = path.join(packageRoot(), 'assets', 'lab-guest', 'ferry-lab-guest.bin');
  // In a packaged app the image is unpacked beside the archive: QEMU cannot read inside app.asar.
  return file.replace(`${path.sep}app.asar${path.sep}`, `${path.sep}app.asar.unpacked${path.sep}`);
}

/**
 * The real path of `p` (symlinks resolved), also for a path that does not exist yet: the deepest
 * existing ancestor is resolved and the rest appended. Paths are compared with this, never as typed:
 * a link inside a storage root may point anywhere.
 */
export async function realPathOf(p: string): Promise<string> {
  const abs = path.resolve(p);
  const rest: string[] = [];
  let dir = abs;
  for (;;) {
    try {
      return path.join(await fs.promises.realpath(dir), ...rest.reverse());
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // A dangling link: a file made through it lands where it points, so that is where the path is.
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
      const st = await fs.promises.lstat(dir).catch(() => null);
      if (st?.isSymbolicLink()) {
        const target = path.resolve(path.dirname(dir), await fs.promises.readlink(dir));
        return realPathOf(path.join(target, ...rest.reverse()));
      }
      const up = path.dirname(dir);
      if (up === dir) return abs;
      rest.push(path.basename(dir));
      dir = up;
    }
  }
}

/** Whether `p` is `root` or lies inside it (both already absolute and resolved). */
export function isInside(p: string, root: string): boolean {
  const rel = path.relative(root, p);
  return rel === '' || (!rel.startsWith(`..${path.sep}`) && rel !== '..' && !path.isAbsolute(rel));
}

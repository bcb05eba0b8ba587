// The main window's size and position, remembered across starts in a small JSON file in the app's
// userData folder. A saved position on a display that is gone is dropped (the size is kept).
import fs from 'node:fs';
import path from 'node:path';
import type { BrowserWindow, Rectangle } from 'electron';
import { z } from 'zod';

export const WindowStateSchema = z.object({
  x: z.number().int().optional(),
  y: z.number().int().optional(),
  width: z.number().int().min(400).max(16384),
  height: z.number().int().min(300).max(16384),
  maximized: z.boolean().default(false),
});
export type WindowState = z.infer<typeof WindowStateSchema>;

export const DEFAULT_STATE: WindowState = { width: 1280, height: 800, maximized: false };
export const STATE_FILE = 'window-state.json';

export function readWindowState(file: string): WindowState {
  try {
    const parsed = WindowStateSchema.safeParse(JSON.parse(fs.readFileSync(file, 'utf8')));
    return parsed.success ? parsed.data : DEFAULT_STATE;
  } catch {
    return DEFAULT_STATE; // first start, or a file someone broke: start with the defaults
  }
}

export function writeWindowState(file: string, state: WindowState): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(state, null, 2));
  fs.renameSync(tmp, file);
}

/** Keeps the position only if at least a 100×50 corner of the window lands on some display. */
export function fitToDisplays(state: WindowState, workAreas: Rectangle[]): WindowState {
  if (state.x === undefined || state.y === undefined) return state;
  const { x, y } = state;
  const visible = workAreas.some(
    (a) =>
      Math.min(x + state.width, a.x + a.width) - Math.max(x, a.x) >= 100 &&
      Math.min(y + state.height, a.y + a.height) - Math.max(y, a.y) >= 50,
  );
  if (visible) return state;
  const { x: _x, y: _y, ...rest } = state;
  return rest;
}

/** Saves the window's normal (unmaximized) bounds when it moves, resizes or closes. */
export function trackWindowState(
  win: Pick<BrowserWindow, 'on' | 'getNormalBounds' | 'isMaximized' | 'isDestroyed'>,
  file: string,
  save: (file: string, state: WindowState) => void = writeWindowState,
  debounceMs = 500,
): void {
  let timer: ReturnType<typeof setTimeout> | null = null;
  const snapshot = (): WindowState => {
    const b = win.getNormalBounds();
    return { x: b.x, y: b.y, width: b.width, height: b.height, maximized: win.isMaximized() };
  };
  const saveNow = (): void => {
    if (timer) clearTimeout(timer);
    timer = null;
    try {
      const state = WindowStateSchema.safeParse(snapshot());
      if (state.success) save(file, state.data);
    } catch {
      // Losing the window's position is not worth an error dialog.
    }
  };
  const later = (): void => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => {
      if (!win.isDestroyed()) saveNow();
    }, debounceMs);
  };
  win.on('resize', later);
  win.on('move', later);
  win.on('maximize', later);
  win.on('unmaximize', later);
  win.on('close', saveNow);
}

// The confirmation an administrator-only settings change needs in the desktop app. The dialog is
// drawn by the main process (a native message box), never by the renderer: a compromised page can ask
// for the change, but only the person at the machine can let it through.
import type { BrowserWindow, Dialog, MessageBoxOptions } from 'electron';

import type { AdminChange } from '../engine/service/api-service.js';

const show = (v: unknown): string =>
  v === null || v === undefined ? 'none' : Array.isArray(v) ? v.join(', ') || 'none' : String(v);

/** The message box for one change: Cancel is the default and what Escape answers. */
export function adminChangeDialog(change: AdminChange): MessageBoxOptions {
  return {
    type: 'warning',
    title: 'Ferry: administrator setting',
    message: `Allow the console to change ${change.settings.join(' and ')} of ${change.host}?`,
    detail:
      change.settings.map((k) => `${k}: ${show(change.from[k])} → ${show(change.to[k])}`).join('\n') +
      '\n\nThe QEMU binary is a program Ferry runs; the storage roots bound which files VMs may use as ' +
      'disks. Allow only a change you asked for yourself.',
    buttons: ['Cancel', 'Allow the change'],
    defaultId: 0,
    cancelId: 0,
    noLink: true,
  };
}

/** ApiService's confirmAdminChange for the desktop app: true only when the user chose "Allow". */
export function confirmWithDialog(
  dialog: Pick<Dialog, 'showMessageBox'>,
  parent: () => BrowserWindow | null,
): (change: AdminChange) => Promise<boolean> {
  return async (change) => {
    const options = adminChangeDialog(change);
    const win = parent();
    const { response } = await (win ? dialog.showMessageBox(win, options) : dialog.showMessageBox(options));
    return response === 1;
  };
}

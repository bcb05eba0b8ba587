// IPC channel names shared by the main process and the preload (which may import nothing heavier).
export const CALL_CHANNEL = 'ferry:call';
export const SUBSCRIBE_CHANNEL = 'ferry:subscribe';
export const EVENT_CHANNEL = 'ferry:event';

/**
 * What the preload exposes to the renderer as `window.ferry`. A placeholder: the real
 * console API arrives with a later issue (and will likely be typed in engine/api so web
 * mode shares it).
 */
export interface FerryBridge {
  /** Ferry's version, from package.json at build time. */
  readonly version: string;
}

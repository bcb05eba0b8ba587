// The component tests import .vue files (as the renderer does, see renderer/src/env.d.ts).
declare module '*.vue' {
  import type { DefineComponent } from 'vue';

  const component: DefineComponent<object, object, unknown>;
  export default component;
}

// One shared clock for uptimes and elapsed times: a ref that ticks while anything uses it.
import { onScopeDispose, ref, type Ref } from 'vue';

const now = ref(Date.now());
let users = 0;
let timer: ReturnType<typeof setInterval> | null = null;

export function useNow(): Readonly<Ref<number>> {
  users++;
  if (!timer) timer = setInterval(() => (now.value = Date.now()), 1000);
  onScopeDispose(() => {
    users--;
    if (users === 0 && timer) {
      clearInterval(timer);
      timer = null;
    }
  });
  return now;
}

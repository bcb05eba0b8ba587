import { createPinia } from 'pinia';
import PrimeVue from 'primevue/config';
import ConfirmationService from 'primevue/confirmationservice';
import ToastService from 'primevue/toastservice';
import { createApp, defineAsyncComponent } from 'vue';
import { connect, setApiClient } from './api/index.js';
import App from './App.vue';
import { consoleTarget } from './model/console-session.js';
import { useInventoryStore } from './stores/inventory.js';
import { useMigrationsStore } from './stores/migrations.js';
import { DARK_CLASS, useUiStore } from './stores/ui.js';
import './styles.css';
import { FerryPreset } from './theme.js';

const { client, connection, mode } = connect(window);
setApiClient(client);

// `#console=VM&host=HOST`: this window (or tab) is that VM's console, not the main window.
const target = consoleTarget(window.location);
if (target) {
  // Asked for another VM (the same named tab reused): start afresh.
  window.addEventListener('hashchange', () => window.location.reload());
}

const pinia = createPinia();
// The console (noVNC, xterm.js) loads only in a console window: the main window never fetches it.
const ConsoleView = defineAsyncComponent(() => import('./components/console/ConsoleView.vue'));
(target ? createApp(ConsoleView, { vm: target.vm, host: target.host }) : createApp(App))
  .use(pinia)
  .use(PrimeVue, { theme: { preset: FerryPreset, options: { darkModeSelector: `.${DARK_CLASS}` } } })
  .use(ToastService)
  .use(ConfirmationService)
  .mount('#app');

const ui = useUiStore(pinia);
const inventory = useInventoryStore(pinia);
const migrations = useMigrationsStore(pinia);
ui.mode = mode;
ui.connection = connection.state;

client.subscribe((e) => {
  if (e.kind === 'migration') migrations.applyMigrationEvent(e.event);
  else if (!target) void inventory.refresh();
});

// A console follows its VM's moves: it needs the migrations, not the inventory.
const refreshAll = (): void => {
  if (!target) void inventory.refresh();
  void migrations.refresh();
};
connection.onStateChange((state) => {
  ui.connection = state;
  // Events missed while disconnected are not replayed: read the state afresh.
  if (state === 'open') refreshAll();
});
refreshAll();

// The CLI and other consoles change things without telling this one: look again now and then.
setInterval(() => {
  if (document.visibilityState === 'visible' && ui.connection === 'open') refreshAll();
}, 5000);

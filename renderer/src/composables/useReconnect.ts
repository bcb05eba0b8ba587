// "Reconnect" for a disconnected (libvirt) host, from the VM table's empty state or the Actions panel:
// the outcome as a toast, the host list showing the new status either way.
import { useToast } from 'primevue/usetoast';
import { errorText } from '../api/errors.js';
import { disconnectedText } from '../model/connect-server.js';
import { useInventoryStore } from '../stores/inventory.js';

export function useReconnect(): (host: string) => Promise<void> {
  const inv = useInventoryStore();
  const toast = useToast();
  return async (host: string) => {
    try {
      const h = await inv.reconnectHost(host);
      if (h.connected) toast.add({ severity: 'success', summary: `Reconnected to ${host}`, life: 3000 });
      else
        toast.add({
          severity: 'error',
          summary: `${host} is still disconnected`,
          detail: disconnectedText(h),
          life: 8000,
        });
    } catch (err) {
      toast.add({
        severity: 'error',
        summary: `Reconnecting ${host} failed`,
        detail: errorText(err),
        life: 8000,
      });
    }
  };
}

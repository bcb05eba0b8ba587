// Moves between libvirt hosts go through libvirt's own migration protocol (Begin, Prepare, Perform,
// Finish, Confirm on the daemons), not through Ferry's QEMU-level steps; until Ferry drives that
// protocol, every migration step of a libvirt host refuses with the same clear reason, and the
// pre-flight says so before anything starts.
import { FerryError } from '../../api/index.js';
import type { MigrationDriver } from '../driver.js';

export const LIBVIRT_MOVES_UNSUPPORTED =
  'moving VMs of libvirt hosts is not available in this version of Ferry yet; virsh migrate can move them meanwhile';

function refuse(): never {
  throw new FerryError('not-supported', LIBVIRT_MOVES_UNSUPPORTED);
}

export class LibvirtMigrationUnsupported implements MigrationDriver {
  constructor(readonly hostName: string) {}

  beginOutgoing = refuse;
  startOutgoing = refuse;
  outgoingStats = refuse;
  nextMigrationEvent = refuse;
  setOutgoingParameters = refuse;
  continueOutgoing = refuse;
  startPostcopy = refuse;
  cancelOutgoing = refuse;
  resumeSource = refuse;
  confirmOutgoing = refuse;
  startDiskMirror = refuse;
  diskJobs = refuse;
  finishDiskMirror = refuse;
  abortDiskMirror = refuse;
  startStorageMove = refuse;
  storageMoveJobs = refuse;
  completeStorageMove = refuse;
  abortStorageMove = refuse;
  freeSpace = refuse;
  prepareIncoming = refuse;
  incomingRunState = refuse;
  storageHandle = refuse;
  finishIncoming = refuse;
  announce = refuse;
  abortIncoming = refuse;
  statFiles = refuse;
  writeMarker = refuse;
  readMarker = refuse;
  removeFile = refuse;
}

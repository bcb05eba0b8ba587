// The migration half of a libvirt host's driver table. Moves between two libvirt hosts go through
// libvirt's own migration protocol (Begin, Prepare, Perform, Finish, Confirm on the daemons, driven by
// engine/migration/libvirt-migration.ts), not through Ferry's QEMU-level steps: those steps refuse with
// the same clear reason, and the pre-flight says so before anything starts. Storage-only moves on the
// host and the file checks of their pre-flight are the host's own (storage-move.ts): subclasses
// implement them.
import { FerryError } from '../../api/index.js';
import type { DiskJob, FileIdentity, MigrationDriver, StorageMoveResult } from '../driver.js';

export const LIBVIRT_MOVES_UNSUPPORTED =
  "a libvirt host moves VMs through libvirt's own migration protocol, not through Ferry's QEMU-level steps";

function refuse(): never {
  throw new FerryError('not-supported', LIBVIRT_MOVES_UNSUPPORTED);
}

export abstract class LibvirtMigrationDriver implements MigrationDriver {
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
  prepareIncoming = refuse;
  incomingRunState = refuse;
  storageHandle = refuse;
  finishIncoming = refuse;
  announce = refuse;
  abortIncoming = refuse;
  writeMarker = refuse;
  readMarker = refuse;
  removeFile = refuse;

  // storage-only moves on this host (R4), and the file checks of their pre-flight
  abstract startStorageMove(
    name: string,
    targets: { id: string; path: string }[],
    speedMiBs: number | null,
  ): Promise<void>;
  abstract storageMoveJobs(name: string): Promise<DiskJob[]>;
  abstract completeStorageMove(name: string): Promise<StorageMoveResult>;
  abstract abortStorageMove(name: string): Promise<void>;
  abstract freeSpace(dirs: string[]): Promise<{ dir: string; freeBytes: number }[]>;
  abstract statFiles(paths: string[]): Promise<FileIdentity[]>;
}

// A relay in front of a destination QEMU's migration port, for multifd moves (Compression,
// Multichannel). QEMU 7.2's multifd source can hang for good when its peer vanishes under busy
// channels (see isBroken in migration.ts): the reset of the connections is what trips it. The relay
// forwards every connection unchanged, in the order they arrive (7.2 takes the first as the main
// channel), and when the destination QEMU goes away it does not pass the reset on: it keeps the
// source's connections open and reads (and drops) what the source still sends, so the source sees a
// healthy peer until Ferry, which notices the destination is gone, cancels the migration cleanly.
// It ends by itself once every connection it carried has closed.
//
// It runs as its own small Node process (`node -e`), in the destination host's network namespace, so
// the migration still crosses the link between the hosts and outlives the Ferry process that started it.

/** The relay's program: argv = listen address, QEMU's address, QEMU's port, file to write its port to. */
export const RELAY_PROGRAM = `
const net = require('net');
const fs = require('fs');
const [listenHost, qemuHost, qemuPort, portFile] = process.argv.slice(1);
let open = 0;
let seen = 0;
let chain = Promise.resolve();
const server = net.createServer({ pauseOnConnect: true }, (src) => {
  seen++;
  open++;
  let srcClosed = false;
  src.on('error', () => {});
  src.once('close', () => {
    srcClosed = true;
    if (--open === 0) process.exit(0);
  });
  chain = chain.then(() => new Promise((connected) => {
    if (srcClosed) return connected();
    const dst = net.connect({ host: qemuHost, port: Number(qemuPort) });
    dst.on('error', () => {});
    dst.once('connect', () => {
      connected();
      src.setNoDelay(true);
      dst.setNoDelay(true);
      src.pipe(dst);
      dst.pipe(src, { end: false });
      src.resume();
    });
    dst.once('close', () => {
      connected();
      if (srcClosed) return;
      src.unpipe(dst);
      src.on('data', () => {});
      src.resume();
    });
    src.once('close', () => dst.destroy());
  }));
});
server.listen(0, listenHost, () => {
  fs.writeFileSync(portFile + '.tmp', String(server.address().port), { mode: 0o600 });
  fs.renameSync(portFile + '.tmp', portFile);
});
setTimeout(() => { if (seen === 0) process.exit(0); }, 600000).unref();
`;

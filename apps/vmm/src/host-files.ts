/**
 * Files and sockets the VMM creates on the host at a client's request or a
 * flag's (docs/security.md#files-and-sockets): the monitor and migration
 * sockets are created 0600 (whatever the umask), snapshot files are written
 * 0600 through an O_EXCL temporary in the same directory and renamed into
 * place, and nothing that is not a socket is ever removed or written through
 * a symbolic link.
 */
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { isMainThread } from 'worker_threads';

/** The directory the VMM chrooted to (--run-with chroot=), for error messages: paths are resolved inside it. */
export const confinement: { chroot?: string } = {};

/** The mode of the sockets and files the VMM creates, unless a `mode=` widens it. */
export const PRIVATE_MODE = 0o600;

/**
 * Listens on a unix socket at `file`, created with `mode` (default 0600).
 * The socket is bound under umask 0177, so it is never reachable with a
 * wider mode than 0600, not even between bind and chmod; a wider `mode`
 * is applied after.
 */
export function listenPrivate(server: net.Server, file: string, mode = PRIVATE_MODE): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    // net.Server.listen binds a unix socket synchronously: the umask covers just that bind.
    // A worker thread cannot set the umask (the fuzz harness runs the monitor in one); there
    // the socket gets its mode by chmod right after the bind.
    const old = isMainThread ? process.umask(0o177) : undefined;
    try {
      server.listen(file, () => {
        server.off('error', reject);
        try {
          if (mode !== PRIVATE_MODE || !isMainThread) fs.chmodSync(file, mode);
          resolve();
        } catch (e) {
          server.close();
          reject(e);
        }
      });
    } finally {
      if (old !== undefined) process.umask(old);
    }
  });
}

/**
 * Why a leftover at socket path `file` must not be removed (it is a regular
 * file, a directory, a symbolic link...), or undefined when there is nothing
 * there or a stale socket that may go.
 */
export function leftoverProblem(file: string): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return undefined;
    return `cannot check ${file}: ${(e as Error).message}`;
  }
  if (st.isSocket()) return undefined;
  return `${file} exists and is ${describeKind(st)}, not a socket; refusing to remove it (remove it yourself or choose another path)`;
}

/** Removes a stale socket at `file`; throws (removing nothing) when something else is there. */
export function removeStaleSocket(file: string): void {
  const problem = leftoverProblem(file);
  if (problem) throw new Error(problem);
  fs.rmSync(file, { force: true });
}

/** Why `file` cannot be the target of an outgoing migration (not a socket, a symbolic link), or undefined. */
export function migrationTargetProblem(file: string): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch (e) {
    const code = (e as { code?: string }).code;
    return code === 'ENOENT'
      ? `${file} does not exist (is the destination started with --incoming unix:${file}?)`
      : `${file}: ${(e as Error).message}`;
  }
  // A symbolic link could send guest RAM to a socket the caller did not name: name the socket itself.
  if (!st.isSocket()) return `${file} is ${describeKind(st)}, not a unix socket; guest memory goes only to a socket named directly`;
  return undefined;
}

function describeKind(st: fs.Stats): string {
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device node';
  return 'not a socket';
}

/** An O_EXCL temporary next to its final path, renamed into place by commit(). */
export interface PrivateFile {
  fd: number;
  tmp: string;
  /** fsyncs, closes and renames the temporary onto the final path (checked again first), then fsyncs the directory. */
  commit(): void;
  /** Closes and removes the temporary. */
  discard(): void;
}

/**
 * Creates the temporary for a file written whole and then put in place
 * (a snapshot): 0600, O_CREAT|O_EXCL|O_NOFOLLOW in the final path's
 * directory, so it never opens a file or link that someone placed there.
 * The final path may be absent or a regular file (replaced); a symbolic
 * link, directory or device there is refused before anything is written,
 * and again just before the rename.
 */
export function createPrivateFile(file: string): PrivateFile {
  const check = () => {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(file);
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOENT') return;
      throw e;
    }
    if (!st.isFile()) throw new Error(`${file} is ${describeKind(st)}; refusing to replace it (a snapshot replaces only a regular file)`);
  };
  check();
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  const c = fs.constants;
  const fd = fs.openSync(tmp, c.O_WRONLY | c.O_CREAT | c.O_EXCL | c.O_NOFOLLOW, PRIVATE_MODE);
  let open = true;
  const close = () => {
    if (open) fs.closeSync(fd);
    open = false;
  };
  return {
    fd,
    tmp,
    commit() {
      fs.fsyncSync(fd);
      close();
      check();
      fs.renameSync(tmp, file);
      try {
        const d = fs.openSync(dir, c.O_RDONLY | c.O_DIRECTORY);
        try {
          fs.fsyncSync(d);
        } finally {
          fs.closeSync(d);
        }
      } catch {
        // a directory that cannot be opened for fsync (permissions) still has the rename
      }
    },
    discard() {
      try {
        close();
      } catch {
        // already closed
      }
      fs.rmSync(tmp, { force: true });
    },
  };
}

// The types a JIT tool sees. Global (no import needed):
//
//   export default async function (args: { text: string }, libos: Libos): Promise<number> {
//     const notes = await libos.fs.readText("notes.txt");
//     return notes.split(/\s+/).length;
//   }
//
// Every call is one broker syscall, made as the AgentProcess that called the tool,
// with its capabilities (narrowed to the tool's own, if it declares any). A refused call
// rejects with an Error whose `name` is the broker's typed error ("PermissionDenied")
// and whose `code` is its stable code ("EPERM").

interface LibosSyscallReply {
  result: unknown;
  blobs: Uint8Array[];
}

interface Libos {
  /** Any syscall by name (`fs.list`, `obj.stat`, `proc.getpid`, ...); resolves to its result. */
  syscall(name: string, params?: Record<string, unknown>): Promise<unknown>;
  /** A syscall with binary data in and out (`fs.read`, `fs.write`). */
  syscallRaw(
    name: string,
    params?: Record<string, unknown>,
    blobs?: Uint8Array[],
  ): Promise<LibosSyscallReply>;
  fs: {
    readText(path: string): Promise<string>;
    readBytes(path: string): Promise<Uint8Array>;
    writeText(path: string, text: string): Promise<number>;
    writeBytes(path: string, data: Uint8Array): Promise<number>;
    list(path?: string): Promise<Array<Record<string, unknown>>>;
    stat(path: string): Promise<Record<string, unknown>>;
  };
  obj: {
    get(name: string, ns?: string): Promise<unknown>;
    put(name: string, value: unknown, opts?: { type?: string; ns?: string }): Promise<unknown>;
  };
}

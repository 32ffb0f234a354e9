// A JIT tool: TypeScript run by Deno with no permissions. It can reach nothing but
// `libos`, and through it only what the calling process may do.
export default async function (args: { path: string }, libos: Libos): Promise<number> {
  const text = await libos.fs.readText(args.path);
  return text.split(/\s+/).filter((w) => w.length > 0).length;
}

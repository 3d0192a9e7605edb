/**
 * The entry of a bench that runs its own clients in a child process: started with `--client`,
 * it reads its job as JSON on stdin and runs `client`; otherwise it runs `main`.
 */
export async function clientOrMain<J>(
  client: (job: J) => Promise<void>,
  main: () => Promise<void>,
): Promise<void> {
  if (!process.argv.includes('--client')) return main()
  let input = ''
  process.stdin.on('data', (d: Buffer) => {
    input += d.toString()
  })
  process.stdin.on('end', () => {
    client(JSON.parse(input) as J).then(
      () => process.exit(0),
      (err: unknown) => {
        console.error(err)
        process.exit(1)
      },
    )
  })
}

/** Network helpers for failure tests: a port where nothing listens, and a TCP proxy the test can cut or stall. */
import net from 'node:net';

export async function unusedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A TCP proxy to Redis that the test can cut (every connection dropped, nothing accepted) and resume on one port, or
 * stall (Redis's replies held back, the connections kept) and let flow again.
 */
export class TcpProxy {
  private readonly sockets = new Set<net.Socket>();
  private readonly upstreams = new Set<net.Socket>();
  private server: net.Server | undefined;
  port = 0;

  private constructor(
    private readonly host: string,
    private readonly targetPort: number,
  ) {}

  static async start(host: string, port: number): Promise<TcpProxy> {
    const proxy = new TcpProxy(host, port);
    await proxy.resume();
    return proxy;
  }

  async resume(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect({ host: this.host, port: this.targetPort });
      this.upstreams.add(upstream);
      upstream.on('close', () => this.upstreams.delete(upstream));
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on('close', () => this.sockets.delete(socket));
        socket.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve));
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  stall(): void {
    for (const upstream of this.upstreams) upstream.pause();
  }

  flow(): void {
    for (const upstream of this.upstreams) upstream.resume();
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const socket of this.sockets) socket.destroy();
    if (server !== undefined) await new Promise((resolve) => server.close(resolve));
  }
}

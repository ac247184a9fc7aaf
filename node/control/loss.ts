// The one lease-loss signal behind every Lease and Leadership of both stores (etcd and memory), so
// `onLost` means the same thing whichever store a node runs on.
//
// Delivery is always in a microtask, never inside the call that noticed the loss: whoever ends a
// lease (a keepalive timer, a failed fence, a leadership reacting to its lease) is not re-entered by
// the listeners it wakes, and a listener that subscribes after the loss hears it the same way as
// one that subscribed before. One listener that throws does not keep the others from hearing.
// Ending quietly (revoke, resign, detach, close) is not a loss: listeners are dropped unheard.

export type LostCallback = (reason: string) => void;

export class LossSignal {
  private state: "live" | "lost" | "ended" = "live";
  private lostReason = "";
  private listeners: LostCallback[] = [];

  /** True until the first lose() or end(). */
  get live(): boolean {
    return this.state === "live";
  }

  onLost(cb: LostCallback): void {
    if (this.state === "lost") deliver(cb, this.lostReason);
    else if (this.state === "live") this.listeners.push(cb);
  }

  /** Marks the loss and tells every listener once; false (and no calls) if already lost or ended. */
  lose(reason: string): boolean {
    if (this.state !== "live") return false;
    this.state = "lost";
    this.lostReason = reason;
    const listeners = this.listeners;
    this.listeners = [];
    for (const cb of listeners) deliver(cb, reason);
    return true;
  }

  /** Ends without a loss (revoked, resigned, detached); false if already lost or ended. */
  end(): boolean {
    if (this.state !== "live") return false;
    this.state = "ended";
    this.listeners = [];
    return true;
  }
}

function deliver(cb: LostCallback, reason: string): void {
  queueMicrotask(() => {
    try {
      cb(reason);
    } catch {
      // one listener's failure must not keep the others from hearing about the loss
    }
  });
}

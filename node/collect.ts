// The one way Ballast turns plain numbers into Prometheus metrics. Hot paths bump fields on their
// own objects (no label lookups per connection); a collected metric reads those fields at scrape
// time, starting from empty each scrape so a service or backend that left disappears from the output.
import client from "prom-client";

/** Emits one sample; a metric without labels is emitted with `{}`. */
export type Emit<L extends string> = (labels: Partial<Record<L, string | number>>, value: number) => void;

interface CollectedOptions<L extends string> {
  name: string;
  help: string;
  labelNames?: readonly L[];
  registry: client.Registry;
  /** Called at each scrape: emit every sample of the metric. */
  read: (emit: Emit<L>) => void;
}

/** prom-client options of a collected metric: empty at each scrape, then filled by `read` through `emitOn`. */
function collectedConfig<L extends string, M extends { reset(): void }>(o: CollectedOptions<L>, emitOn: (metric: M) => Emit<L>) {
  const { read } = o;
  return {
    name: o.name,
    help: o.help,
    labelNames: o.labelNames ?? [],
    registers: [o.registry],
    collect(this: M) {
      this.reset();
      read(emitOn(this));
    },
  };
}

/** A counter whose totals are read at scrape time (the source owns the running total). */
export function collectedCounter<L extends string>(o: CollectedOptions<L>): client.Counter<L> {
  return new client.Counter<L>(collectedConfig(o, (m: client.Counter<L>) => (labels, value) => m.inc(labels, value)));
}

/** A gauge whose values are read at scrape time. */
export function collectedGauge<L extends string>(o: CollectedOptions<L>): client.Gauge<L> {
  return new client.Gauge<L>(collectedConfig(o, (m: client.Gauge<L>) => (labels, value) => m.set(labels, value)));
}

interface CollectedValueOptions {
  name: string;
  help: string;
  registry: client.Registry;
  /** Called at each scrape: the metric's one value. */
  value: () => number;
}

/** A label-less counter whose running total is one number the source keeps. */
export function collectedTotal(o: CollectedValueOptions): client.Counter<never> {
  const { value } = o;
  return collectedCounter<never>({ name: o.name, help: o.help, registry: o.registry, read: (emit) => emit({}, value()) });
}

/** A label-less gauge read from one number at scrape time. */
export function collectedValue(o: CollectedValueOptions): client.Gauge<never> {
  const { value } = o;
  return collectedGauge<never>({ name: o.name, help: o.help, registry: o.registry, read: (emit) => emit({}, value()) });
}

/** A histogram's child per value of its one label; `forget` drops the child and its series. */
export interface ChildCache<L extends string> {
  (value: string): client.Histogram.Internal<L>;
  forget(value: string): void;
}

/** A histogram's child per label value, looked up once: observing then costs no label hashing. */
export function childCache<L extends string>(histogram: client.Histogram<L>): ChildCache<L> {
  const children = new Map<string, client.Histogram.Internal<L>>();
  const get = (value: string) => {
    let child = children.get(value);
    if (child === undefined) {
      child = histogram.labels(value);
      children.set(value, child);
    }
    return child;
  };
  return Object.assign(get, {
    forget(value: string) {
      children.delete(value);
      histogram.remove(value);
    },
  });
}

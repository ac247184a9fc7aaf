#!/usr/bin/env node
// The `ballast` command: the compiled CLI (run `npm run build` first when working from a checkout).
import { main } from "../dist/node/cli.js";

await main();

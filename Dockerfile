# syntax=docker/dockerfile:1
# nodelink image, for the DaemonSets in deploy/ and for running the server by hand:
#   docker build -t nodelink:0.1.0 .
# The daemons run as UID 0 because Kubernetes hands NET_ADMIN only to root (no ambient
# capabilities); the manifests drop every other capability and make the root filesystem read-only.
# keygen and pubkey need no privilege:  docker run --rm --user 65534 nodelink:0.1.0 keygen

ARG NODE_IMAGE=node:22-bookworm-slim

# ---- build: TypeScript, the tuntap addon and the native TUN I/O module, then production deps only
FROM ${NODE_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 make g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
COPY native/binding.gyp native/tunio.c ./native/
COPY src/ ./src/
# npm ci builds the addon (allowScripts) and runs `prepare`: node-gyp for native/, then tsc.
RUN npm ci --no-audit --no-fund \
    && npm prune --omit=dev --no-audit --no-fund

# ---- runtime: node, iproute2 (nodelink configures routes with `ip`), nftables (the server drops
# flows nodes open with an nftables table; without nft it refuses to start unless
# --allow-node-initiated), the built app
FROM ${NODE_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 nftables \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules/ ./node_modules/
COPY --from=build /src/dist/src/ ./dist/src/
COPY --from=build /src/native/build/Release/tunio.node ./native/build/Release/tunio.node
RUN chmod 0755 dist/src/cli/main.js \
    && ln -s /app/dist/src/cli/main.js /usr/local/bin/nodelink
ENTRYPOINT ["nodelink"]
CMD ["--help"]

// A small, strict subset of `kustomize build`, enough to render deploy/ offline (no kustomize or
// kubectl binary is available here): resources (files and directories), namespace, images,
// configMapGenerator with literals (disableNameSuffixHash only) and strategic-merge patches by
// file. Any other field fails loudly, so a kustomization cannot grow past what this checks.

import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';

export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; [key: string]: unknown };
  [key: string]: unknown;
};

const SUPPORTED = new Set([
  'apiVersion',
  'kind',
  'namespace',
  'resources',
  'images',
  'configMapGenerator',
  'generatorOptions',
  'patches',
]);
const CLUSTER_SCOPED = new Set(['ClusterRole', 'ClusterRoleBinding', 'Namespace', 'PriorityClass']);

/** Parses every YAML document of a file, failing on any YAML error or warning. */
export function readYamlDocuments(path: string): unknown[] {
  const docs = parseAllDocuments(readFileSync(path, 'utf8'), { prettyErrors: true, strict: true, uniqueKeys: true });
  const out: unknown[] = [];
  for (const doc of docs) {
    const problems = [...doc.errors, ...doc.warnings];
    if (problems.length > 0) throw new Error(`${path}: ${problems.map((p) => p.message).join('; ')}`);
    const value = doc.toJS() as unknown;
    if (value !== null && value !== undefined) out.push(value);
  }
  return out;
}

export function renderKustomization(dir: string): K8sObject[] {
  const path = join(dir, 'kustomization.yaml');
  if (!existsSync(path)) throw new Error(`${dir}: no kustomization.yaml`);
  const [k] = readYamlDocuments(path) as Array<Record<string, unknown>>;
  if (!k || k['apiVersion'] !== 'kustomize.config.k8s.io/v1beta1' || k['kind'] !== 'Kustomization') {
    throw new Error(`${path}: expected apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization`);
  }
  for (const key of Object.keys(k))
    if (!SUPPORTED.has(key)) throw new Error(`${path}: field "${key}" is not supported by this renderer`);

  const objects: K8sObject[] = [];
  for (const entry of (k['resources'] as string[] | undefined) ?? []) {
    const target = join(dir, entry);
    if (!existsSync(target)) throw new Error(`${path}: resource ${entry} does not exist`);
    if (statSync(target).isDirectory()) objects.push(...renderKustomization(target));
    else objects.push(...(readYamlDocuments(target) as K8sObject[]));
  }

  const generators = (k['configMapGenerator'] as Array<Record<string, unknown>> | undefined) ?? [];
  if (
    generators.length > 0 &&
    (k['generatorOptions'] as { disableNameSuffixHash?: boolean } | undefined)?.disableNameSuffixHash !== true
  ) {
    throw new Error(`${path}: this renderer needs generatorOptions.disableNameSuffixHash: true`);
  }
  for (const generator of generators) {
    for (const key of Object.keys(generator))
      if (key !== 'name' && key !== 'literals') throw new Error(`${path}: configMapGenerator.${key} is not supported`);
    const data: Record<string, string> = {};
    for (const literal of (generator['literals'] as string[]) ?? []) {
      const eq = literal.indexOf('=');
      if (eq <= 0) throw new Error(`${path}: literal "${literal}" is not KEY=VALUE`);
      data[literal.slice(0, eq)] = literal.slice(eq + 1);
    }
    objects.push({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: String(generator['name']) }, data });
  }

  for (const patch of (k['patches'] as Array<Record<string, unknown>> | undefined) ?? []) {
    if (Object.keys(patch).some((key) => key !== 'path'))
      throw new Error(`${path}: only patches with "path" are supported`);
    for (const doc of readYamlDocuments(join(dir, String(patch['path']))) as K8sObject[]) {
      const target = objects.find((o) => o.kind === doc.kind && o.metadata.name === doc.metadata.name);
      if (!target)
        throw new Error(`${path}: patch ${String(patch['path'])} matches no ${doc.kind} "${doc.metadata.name}"`);
      objects[objects.indexOf(target)] = strategicMerge(target, doc) as K8sObject;
    }
  }

  const namespace = k['namespace'] as string | undefined;
  if (namespace) {
    for (const o of objects) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = namespace;
  }

  for (const image of (k['images'] as Array<{ name: string; newName?: string; newTag?: string }> | undefined) ?? []) {
    for (const o of objects) {
      const pod = (
        o as {
          spec?: {
            template?: {
              spec?: { containers?: Array<{ image?: string }>; initContainers?: Array<{ image?: string }> };
            };
          };
        }
      ).spec?.template?.spec;
      for (const container of [...(pod?.containers ?? []), ...(pod?.initContainers ?? [])]) {
        const [name, tag] = (container.image ?? '').split(':');
        if (name === image.name) container.image = `${image.newName ?? name}:${image.newTag ?? tag}`;
      }
    }
  }
  return objects;
}

/**
 * Strategic merge as kustomize does it for the fields used here: maps merge, lists of named
 * items merge by name (new items first), other lists are replaced.
 */
export function strategicMerge(base: unknown, patch: unknown): unknown {
  if (Array.isArray(base) && Array.isArray(patch)) {
    const named = (list: unknown[]): boolean =>
      list.every((item) => typeof item === 'object' && item !== null && 'name' in item);
    if (!named(base) || !named(patch)) return patch;
    // Like kustomize: items the base lacks come first, in the patch's order; the rest merge in place.
    const merged = (base as Array<{ name: string }>).map((existing) => {
      const item = (patch as Array<{ name: string }>).find((candidate) => candidate.name === existing.name);
      return item ? (strategicMerge(existing, item) as { name: string }) : existing;
    });
    const added = (patch as Array<{ name: string }>).filter(
      (item) => !(base as Array<{ name: string }>).some((existing) => existing.name === item.name),
    );
    return [...added, ...merged];
  }
  if (
    typeof base === 'object' &&
    base !== null &&
    typeof patch === 'object' &&
    patch !== null &&
    !Array.isArray(base) &&
    !Array.isArray(patch)
  ) {
    const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
    for (const [key, value] of Object.entries(patch as Record<string, unknown>)) {
      out[key] = key in out ? strategicMerge(out[key], value) : value;
    }
    return out;
  }
  return patch;
}

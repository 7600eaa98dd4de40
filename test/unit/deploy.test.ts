// deploy/, Dockerfile and .dockerignore, checked offline (no cluster, kubectl, kustomize or
// docker here): every kustomization renders (test/unit/kustomize.ts), every object validates
// against the Kubernetes OpenAPI schemas (kubernetes-models) and type-checks against
// kubernetes-types with tsc (misspelled or unknown keys), YAML 1.1 and 1.2 read each file the
// same, the security-relevant settings are asserted one by one, every NODELINK_* variable names
// a real flag, and the Dockerfile passes dockerfile-utils' linter.

import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import { validate as lintDockerfile, ValidationSeverity } from 'dockerfile-utils';
import { readYamlDocuments, renderKustomization, strategicMerge, type K8sObject } from './kustomize.js';
import { checkApiserverFlags } from '../../src/cli/apiserver-flags.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const DEPLOY = join(ROOT, 'deploy');
const MAIN = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const execFileAsync = promisify(execFile);

/** kubernetes-models module and kubernetes-types module + type for each kind deploy/ uses. */
const KINDS: Record<string, { model: string; types: string; type: string }> = {
  'apps/v1 DaemonSet': {
    model: 'kubernetes-models/apps/v1/DaemonSet',
    types: 'kubernetes-types/apps/v1',
    type: 'DaemonSet',
  },
  'v1 ServiceAccount': {
    model: 'kubernetes-models/v1/ServiceAccount',
    types: 'kubernetes-types/core/v1',
    type: 'ServiceAccount',
  },
  'v1 ConfigMap': { model: 'kubernetes-models/v1/ConfigMap', types: 'kubernetes-types/core/v1', type: 'ConfigMap' },
  'apps/v1 Deployment': {
    model: 'kubernetes-models/apps/v1/Deployment',
    types: 'kubernetes-types/apps/v1',
    type: 'Deployment',
  },
  'v1 Service': { model: 'kubernetes-models/v1/Service', types: 'kubernetes-types/core/v1', type: 'Service' },
  'v1 Pod': { model: 'kubernetes-models/v1/Pod', types: 'kubernetes-types/core/v1', type: 'Pod' },
  'rbac.authorization.k8s.io/v1 ClusterRole': {
    model: 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole',
    types: 'kubernetes-types/rbac/v1',
    type: 'ClusterRole',
  },
  'rbac.authorization.k8s.io/v1 ClusterRoleBinding': {
    model: 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding',
    types: 'kubernetes-types/rbac/v1',
    type: 'ClusterRoleBinding',
  },
};

const KUSTOMIZATIONS = ['', 'base', 'server', 'overlays/example', 'apiserver-sidecar'];
/** The hosted control plane's namespace in deploy/apiserver-sidecar; every other object is in kube-system. */
const SIDECAR_NAMESPACE = 'example-control-plane';
const STATIC_POD_PATCH = join(DEPLOY, 'static-pod', 'patches', 'kube-apiserver+strategic.yaml');
const KUBEADM_APISERVER = join(ROOT, 'test', 'fixtures', 'kubeadm', 'kube-apiserver.yaml');

function kindOf(o: K8sObject): string {
  return `${o.apiVersion} ${o.kind}`;
}

/** kubernetes-models' schema validation (required fields, enums, formats). Throws naming the object. */
async function validateWithModels(objects: readonly K8sObject[]): Promise<void> {
  for (const o of objects) {
    const entry = KINDS[kindOf(o)];
    if (!entry) throw new Error(`${kindOf(o)} ${o.metadata?.name}: no schema registered in deploy.test.ts`);
    const Model = ((await import(entry.model)) as Record<string, new (data: unknown) => { validate(): void }>)[o.kind]!;
    try {
      new Model(o).validate();
    } catch (err) {
      throw new Error(`${kindOf(o)} ${o.metadata.name}: ${(err as Error).message}`);
    }
  }
}

/**
 * Writes each set of objects as typed object literals, one file per set, and compiles them all in
 * one tsc program: excess-property checks catch unknown or misspelled keys anywhere in the tree,
 * and wrong value types. Returns the diagnostics per set, one line each.
 */
function typeCheck(sets: ReadonlyMap<string, readonly K8sObject[]>): Map<string, string[]> {
  const dir = join(ROOT, 'dist', 'deploy-typecheck');
  mkdirSync(dir, { recursive: true });
  const files = new Map<string, string>();
  for (const [label, objects] of sets) {
    const imports = new Map<string, Set<string>>();
    const lines: string[] = [];
    objects.forEach((o, i) => {
      const entry = KINDS[kindOf(o)];
      if (!entry) throw new Error(`${kindOf(o)}: no kubernetes-types type registered`);
      if (!imports.has(entry.types)) imports.set(entry.types, new Set());
      imports.get(entry.types)!.add(entry.type);
      lines.push(
        `// ${kindOf(o)} ${o.metadata.name}\nexport const object${i}: ${entry.type} = ${JSON.stringify(o, null, 2)};`,
      );
    });
    const header = [...imports].map(([module, types]) => `import type { ${[...types].join(', ')} } from '${module}';`);
    const file = join(dir, `${label.replace(/[^a-z0-9]+/gi, '_') || 'root'}.ts`);
    writeFileSync(file, `${header.join('\n')}\n\n${lines.join('\n\n')}\n`);
    files.set(file, label);
  }
  const program = ts.createProgram([...files.keys()], {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    lib: ['lib.es2022.d.ts'],
    module: ts.ModuleKind.CommonJS,
    moduleResolution: ts.ModuleResolutionKind.Node10,
    target: ts.ScriptTarget.ES2022,
  });
  const out = new Map<string, string[]>([...sets.keys()].map((label) => [label, []]));
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const label = d.file ? files.get(d.file.fileName) : undefined;
    const where =
      d.file && d.start !== undefined ? `line ${d.file.getLineAndCharacterOfPosition(d.start).line + 1}: ` : '';
    const text = `${where}${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`;
    if (label === undefined) throw new Error(`tsc: ${text}`);
    out.get(label)!.push(text);
  }
  return out;
}

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? yamlFiles(path) : name.endsWith('.yaml') ? [path] : [];
  });
}

type Pod = {
  hostNetwork?: boolean;
  priorityClassName?: string;
  serviceAccountName?: string;
  terminationGracePeriodSeconds?: number;
  dnsPolicy?: string;
  nodeSelector?: Record<string, string>;
  tolerations?: Array<{ key?: string; operator?: string; effect?: string }>;
  containers: Array<Container>;
  initContainers?: Array<Container>;
  volumes?: Array<Record<string, any>>;
};
type Container = {
  name: string;
  image: string;
  args?: string[];
  command?: string[];
  ports?: Array<{ name?: string; containerPort: number }>;
  startupProbe?: { httpGet?: { path: string; port: number | string; host?: string } };
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  envFrom?: Array<{ configMapRef?: { name: string } }>;
  securityContext?: Record<string, any>;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  livenessProbe?: { httpGet?: { path: string; port: number | string; host?: string } };
  readinessProbe?: { httpGet?: { path: string; port: number | string; host?: string } };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
};

function daemonSet(objects: readonly K8sObject[], name: string): { spec: any; pod: Pod; container: Container } {
  const ds = objects.find((o) => o.kind === 'DaemonSet' && o.metadata.name === name) as unknown as
    { spec: any } | undefined;
  if (!ds) throw new Error(`no DaemonSet ${name}`);
  const pod = ds.spec.template.spec as Pod;
  expect(pod.containers, 'one container').to.have.length(1);
  return { spec: ds.spec, pod, container: pod.containers[0]! };
}

const envValue = (c: Container, name: string): string | undefined => c.env?.find((e) => e.name === name)?.value;

/** The pod spec of a Deployment (its template) or of a Pod. */
function podSpec(o: K8sObject): Pod {
  const spec = o['spec'] as { template?: { spec: Pod } } & Pod;
  return spec.template ? spec.template.spec : spec;
}

function allContainers(o: K8sObject): Container[] {
  const pod = podSpec(o);
  return [...(pod.initContainers ?? []), ...pod.containers];
}

/** Not privileged, no escalation, read-only root, capabilities: drop ALL, add NET_ADMIN. */
function assertNetAdminOnly(c: Container): void {
  const sc = c.securityContext!;
  expect(sc['privileged'] ?? false, `${c.name} not privileged`).to.equal(false);
  expect(sc['allowPrivilegeEscalation'], `${c.name} allowPrivilegeEscalation`).to.equal(false);
  expect(sc['readOnlyRootFilesystem'], `${c.name} readOnlyRootFilesystem`).to.equal(true);
  expect(sc['capabilities'], `${c.name} capabilities`).to.deep.equal({ drop: ['ALL'], add: ['NET_ADMIN'] });
}

/** /dev/net/tun from the host as a character device, the only hostPath, mounted at the same path. */
function assertTunOnlyHostPath(pod: Pod, c: Container): void {
  const tun = pod.volumes!.find((v) => v['hostPath']?.path === '/dev/net/tun');
  expect(tun?.['hostPath'], '/dev/net/tun hostPath').to.deep.equal({ path: '/dev/net/tun', type: 'CharDevice' });
  expect(
    pod.volumes!.filter((v) => v['hostPath']),
    'no other hostPath',
  ).to.have.length(1);
  expect(c.volumeMounts!.find((m) => m.name === tun!['name'])?.mountPath).to.equal('/dev/net/tun');
}

/** The settings both daemons need to run safely with NET_ADMIN in the host network. */
function assertPrivilegeAndProbes(pod: Pod, c: Container): void {
  expect(pod.hostNetwork, 'hostNetwork').to.equal(true);
  assertNetAdminOnly(c);
  assertTunOnlyHostPath(pod, c);
  // Probes on the --metrics endpoint: /healthz and /readyz on its port, on loopback.
  const metrics = envValue(c, 'NODELINK_METRICS');
  expect(metrics, 'NODELINK_METRICS').to.match(/^127\.0\.0\.1:\d+$/);
  const port = Number(metrics!.split(':')[1]);
  expect(c.livenessProbe?.httpGet).to.deep.equal({ host: '127.0.0.1', path: '/healthz', port });
  expect(c.readinessProbe?.httpGet).to.deep.equal({ host: '127.0.0.1', path: '/readyz', port });
  expect(c.resources?.requests?.['cpu'] && c.resources.requests['memory'], 'requests').to.be.a('string');
  expect(c.resources?.limits?.['cpu'] && c.resources.limits['memory'], 'limits').to.be.a('string');
  // The daemons take up to 2 s to say goodbye and remove nl0; the kubelet must wait longer.
  expect(pod.terminationGracePeriodSeconds).to.be.within(5, 60);
  expect(pod.dnsPolicy, 'the link must not depend on cluster DNS').to.equal('Default');
  expect(pod.tolerations, 'tolerates every taint').to.deep.include({ operator: 'Exists' });
}

/** The secret volume holding a key: mode 0400, mounted read-only. */
function assertKeyVolume(pod: Pod, c: Container, secretName: string): { mountPath: string } {
  const volume = pod.volumes!.find((v) => v['secret']?.secretName === secretName);
  expect(volume, `secret volume ${secretName}`).to.not.equal(undefined);
  expect(volume!['secret'].defaultMode, 'key files 0400').to.equal(0o400);
  const mount = c.volumeMounts!.find((m) => m.name === volume!['name'])!;
  expect(mount.readOnly, 'key mount read-only').to.equal(true);
  return mount;
}

/** Kubernetes mode on the server: TokenReview, a watch of Nodes, and pods for tokens without a node claim. */
const SERVER_RULES = [
  { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
  { apiGroups: [''], resources: ['nodes'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: [''], resources: ['pods'], verbs: ['get'] },
];

function rbacRules(objects: readonly K8sObject[], name: string, serviceAccount: string, namespace: string): unknown {
  const role = objects.find((o) => o.kind === 'ClusterRole' && o.metadata.name === name) as unknown as {
    rules: unknown;
  };
  const binding = objects.find((o) => o.kind === 'ClusterRoleBinding' && o.metadata.name === name) as unknown as {
    roleRef: unknown;
    subjects: unknown;
  };
  expect(binding.roleRef).to.deep.equal({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name });
  expect(binding.subjects).to.deep.equal([{ kind: 'ServiceAccount', name: serviceAccount, namespace }]);
  expect(
    objects.some(
      (o) => o.kind === 'ServiceAccount' && o.metadata.name === serviceAccount && o.metadata.namespace === namespace,
    ),
  ).to.equal(true);
  return role.rules;
}

/** Flags that `nodelink <command> --help` lists. */
async function cliFlags(command: string): Promise<Set<string>> {
  const { stdout } = await execFileAsync(process.execPath, [MAIN, command, '--help'], {
    encoding: 'utf8',
    env: { PATH: process.env['PATH'] ?? '' },
  });
  return new Set([...stdout.matchAll(/--([a-z][a-z0-9-]*)/g)].map((m) => m[1]!));
}

/** NODELINK_FOO_BAR → foo-bar. */
const flagOf = (variable: string): string => variable.slice('NODELINK_'.length).toLowerCase().replace(/_/g, '-');

describe('deploy/: Kubernetes manifests, checked offline', function () {
  this.timeout(30_000);
  const rendered = new Map<string, K8sObject[]>();
  /** The base DaemonSet with one defect each, to prove the validators catch it. */
  const broken = new Map<string, K8sObject>();
  let diagnostics: Map<string, string[]>;

  before(function () {
    for (const dir of KUSTOMIZATIONS) rendered.set(dir, renderKustomization(join(DEPLOY, dir)));
    // kubeadm merges the static-pod patch into its own manifest, as kustomize would.
    const [kubeadmPod] = readYamlDocuments(KUBEADM_APISERVER) as K8sObject[];
    const [patch] = readYamlDocuments(STATIC_POD_PATCH) as K8sObject[];
    rendered.set('static-pod', [strategicMerge(kubeadmPod, patch) as K8sObject]);
    const good = rendered.get('base')!.find((o) => o.kind === 'DaemonSet')!;
    const defect = (name: string, change: (pod: any) => void): void => {
      const copy = structuredClone(good) as any;
      change(copy.spec.template.spec);
      broken.set(name, copy as K8sObject);
    };
    defect('misspelled', (pod) => {
      pod.hostNetwrok = pod.hostNetwork;
      delete pod.hostNetwork;
    });
    defect('deep', (pod) => {
      pod.containers[0].securityContext.capabilites = { add: ['NET_ADMIN'] };
    });
    defect('enum', (pod) => {
      pod.containers[0].imagePullPolicy = 'Sometimes';
    });
    defect('noname', (pod) => {
      delete pod.containers[0].name;
    });
    // One tsc program for everything: loading kubernetes-types is the slow part.
    const sets = new Map<string, readonly K8sObject[]>(rendered);
    for (const [name, o] of broken) sets.set(`broken-${name}`, [o]);
    diagnostics = typeCheck(sets);
  });

  it('every kustomization renders: deploy/ (= base), base, server, overlays/example, apiserver-sidecar', function () {
    const names = (dir: string): string[] =>
      rendered
        .get(dir)!
        .map((o) => `${o.kind}/${o.metadata.name}`)
        .sort();
    expect(names('')).to.deep.equal(names('base'));
    expect(names('base')).to.deep.equal(['DaemonSet/nodelink-client', 'ServiceAccount/nodelink-client']);
    expect(names('server')).to.deep.equal([
      'ClusterRole/nodelink-server',
      'ClusterRoleBinding/nodelink-server',
      'DaemonSet/nodelink-server',
      'ServiceAccount/nodelink-server',
    ]);
    expect(names('overlays/example')).to.deep.equal([...names('base'), 'ConfigMap/nodelink-client'].sort());
    expect(names('apiserver-sidecar')).to.deep.equal(['Deployment/kube-apiserver', 'Service/nodelink']);
    for (const [dir, objects] of rendered) {
      for (const o of objects)
        if (!o.kind.startsWith('Cluster'))
          expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).to.equal(
            dir === 'apiserver-sidecar' ? SIDECAR_NAMESPACE : 'kube-system',
          );
    }
  });

  it('renders exactly as `kubectl kustomize` does, where kubectl is installed', async function () {
    const key = (o: K8sObject): string => `${o.kind}/${o.metadata.name}`;
    const byKey = (a: K8sObject, b: K8sObject): number => key(a).localeCompare(key(b));
    for (const dir of KUSTOMIZATIONS) {
      let text: string;
      try {
        ({ stdout: text } = await execFileAsync('kubectl', ['kustomize', join(DEPLOY, dir)], {
          encoding: 'utf8',
          timeout: 20_000,
        }));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        console.log(
          '\n    *** PENDING: kubectl is not installed; the renderer is not cross-checked against kustomize ***\n',
        );
        this.skip();
      }
      const real = parseAllDocuments(text)
        .map((d) => d.toJS() as K8sObject)
        .sort(byKey);
      expect(JSON.parse(JSON.stringify([...rendered.get(dir)!].sort(byKey))), `deploy/${dir}`).to.deep.equal(real);
    }
  });

  it('every YAML file reads the same as YAML 1.1 (kubectl) and 1.2 (kustomize), without warnings', function () {
    for (const file of yamlFiles(DEPLOY)) {
      const text = readFileSync(file, 'utf8');
      const as = (version: '1.1' | '1.2'): unknown[] =>
        parseAllDocuments(text, { version }).map((d) => d.toJS() as unknown);
      expect(as('1.1'), file).to.deep.equal(as('1.2'));
      readYamlDocuments(file);
    }
  });

  it('every object validates against the Kubernetes schemas (kubernetes-models)', async function () {
    for (const [dir, objects] of rendered) {
      try {
        await validateWithModels(objects);
      } catch (err) {
        throw new Error(`deploy/${dir}: ${(err as Error).message}`);
      }
    }
  });

  it('every object type-checks against kubernetes-types with tsc (no unknown or misspelled keys)', function () {
    for (const dir of rendered.keys()) expect(diagnostics.get(dir), `deploy/${dir}`).to.deep.equal([]);
  });

  it('the validators catch a misspelled key, a bad enum and a missing required field', async function () {
    const text = (name: string): string => diagnostics.get(`broken-${name}`)!.join('\n');
    expect(text('misspelled')).to.match(/'"hostNetwrok"' does not exist in type 'PodSpec'/);
    expect(text('deep')).to.match(/'"capabilites"' does not exist in type 'SecurityContext'/);
    expect(text('noname')).to.match(/Property 'name' is missing/);
    const modelError = async (o: K8sObject): Promise<string> =>
      validateWithModels([o]).then(
        () => '',
        (err: Error) => err.message,
      );
    expect(await modelError(broken.get('enum')!)).to.match(
      /imagePullPolicy must be equal to one of the allowed values/,
    );
    expect(await modelError(broken.get('noname')!)).to.match(/containers\/0 must have required property name/);
  });

  it('client DaemonSet: NET_ADMIN only, hostNetwork, /dev/net/tun, node-critical, every node, bounded rollout, probes', function () {
    const { spec, pod, container: c } = daemonSet(rendered.get('base')!, 'nodelink-client');
    assertPrivilegeAndProbes(pod, c);
    expect(pod.priorityClassName).to.equal('system-node-critical');
    expect(spec.updateStrategy.type).to.equal('RollingUpdate');
    expect(spec.updateStrategy.rollingUpdate.maxUnavailable).to.match(/^([1-9]|[1-9][0-9]?%)$/);
    expect(pod.serviceAccountName).to.equal('nodelink-client');
    expect(c.args).to.deep.equal(['client']);
    // Its name from the downward API, its identity from its own projected token, the server from the ConfigMap.
    expect(c.env![0]).to.deep.equal({ name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } });
    const token = (pod.volumes as any[]).find((v) => v.projected)!;
    expect(token.projected.sources).to.deep.equal([
      { serviceAccountToken: { audience: 'nodelink', expirationSeconds: 600, path: 'token' } },
    ]);
    const mount = c.volumeMounts!.find((m) => m.name === token.name)!;
    expect(mount.readOnly).to.equal(true);
    expect(envValue(c, 'NODELINK_TOKEN_FILE')).to.equal(`${mount.mountPath}/token`);
    expect(envValue(c, 'NODELINK_KEY'), 'no key file: nothing a node holds works for another').to.equal(undefined);
    expect(c.envFrom).to.deep.equal([{ configMapRef: { name: 'nodelink-client' } }]);
    // No key material anywhere on the node side: no Secret volume, no API token, no RBAC at all.
    expect((pod.volumes as any[]).some((v) => v.secret)).to.equal(false);
    expect((pod as any).automountServiceAccountToken).to.equal(false);
    expect(rendered.get('base')!.filter((o) => /Role/.test(o.kind))).to.deep.equal([]);
  });

  it('server DaemonSet: control-plane nodes only, the same privileges, its key, Kubernetes mode and its RBAC', function () {
    const { pod, container: c } = daemonSet(rendered.get('server')!, 'nodelink-server');
    assertPrivilegeAndProbes(pod, c);
    expect(pod.nodeSelector).to.include({ 'node-role.kubernetes.io/control-plane': '' });
    expect(c.args).to.deep.equal(['server']);
    const mount = assertKeyVolume(pod, c, 'nodelink-server-key');
    expect(envValue(c, 'NODELINK_KEY')).to.equal(`${mount.mountPath}/server.key`);
    expect(envValue(c, 'NODELINK_NODE_AUTH')).to.equal('kubernetes');
    expect(envValue(c, 'NODELINK_PEERS')).to.equal(undefined);
    expect(rbacRules(rendered.get('server')!, 'nodelink-server', 'nodelink-server', 'kube-system')).to.deep.equal(
      SERVER_RULES,
    );
    // A client never lands on a control-plane node, where the server already owns nl0.
    const client = daemonSet(rendered.get('base')!, 'nodelink-client').pod as any;
    expect(
      client.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions,
    ).to.deep.include({ key: 'node-role.kubernetes.io/control-plane', operator: 'DoesNotExist' });
  });

  it('the example overlay sets the image, generates the ConfigMap the base reads, and patches by name', function () {
    const objects = rendered.get('overlays/example')!;
    const { spec, container: c } = daemonSet(objects, 'nodelink-client');
    expect(c.image).to.equal('registry.example.com/platform/nodelink:0.1.0');
    expect(spec.updateStrategy.rollingUpdate.maxUnavailable).to.equal('5%');
    expect(envValue(c, 'NODELINK_LOG_FORMAT')).to.equal('json');
    expect(envValue(c, 'NODELINK_TOKEN_FILE'), 'the patch merged env by name').to.match(/\/token$/);
    expect(c.resources).to.deep.equal({
      requests: { cpu: '50m', memory: '64Mi' },
      limits: { cpu: '1', memory: '384Mi' },
    });
    const config = objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: Record<string, string> };
    expect(Object.keys(config.data)).to.include.members(['NODELINK_SERVER', 'NODELINK_SERVER_KEY']);
  });

  it('every NODELINK_* variable in deploy/ is a flag of the command it configures', async function () {
    const [client, server] = await Promise.all([cliFlags('client'), cliFlags('server')]);
    // The probes need --metrics (/healthz, /readyz) on both commands.
    expect(client, 'client flags').to.include('metrics');
    expect(server, 'server flags').to.include('metrics');
    const check = (objects: readonly K8sObject[], flags: Set<string>): void => {
      for (const o of objects) {
        const names =
          o.kind === 'ConfigMap'
            ? Object.keys((o as unknown as { data: Record<string, string> }).data)
            : o.kind === 'DaemonSet'
              ? daemonSet([o], o.metadata.name).container.env!.map((e) => e.name)
              : ['Deployment', 'Pod'].includes(o.kind)
                ? allContainers(o).flatMap((c) => (c.env ?? []).map((e) => e.name))
                : [];
        for (const name of names.filter((n) => n.startsWith('NODELINK_')))
          expect(flags, `${name} (${o.kind}/${o.metadata.name})`).to.include(flagOf(name));
      }
    };
    check(rendered.get('overlays/example')!, client);
    check(rendered.get('server')!, server);
    check(rendered.get('apiserver-sidecar')!, server);
    check(rendered.get('static-pod')!, server);
    // The static pod's settings file: every key a server flag.
    const [file] = readYamlDocuments(join(DEPLOY, 'static-pod', 'nodelink-server.yaml')) as Array<
      Record<string, unknown>
    >;
    for (const key of Object.keys(file!)) expect(server, `nodelink-server.yaml: ${key}`).to.include(key);
  });

  it('apiserver sidecar: the server in the apiserver pod, an init step for the fail-closed routes, NET_ADMIN only', function () {
    const objects = rendered.get('apiserver-sidecar')!;
    const pod = podSpec(objects.find((o) => o.kind === 'Deployment')!);
    expect(pod.hostNetwork ?? false, "the pod's own network namespace, shared with the apiserver").to.equal(false);
    expect(pod.containers.map((c) => c.name)).to.deep.equal(['nodelink-server', 'kube-apiserver']);
    const server = pod.containers[0]!;
    const init = pod.initContainers!.find((c) => c.name === 'nodelink-routes')!;
    expect(server.args).to.deep.equal(['server']);
    expect(init.args).to.deep.equal(['server', '--init-routes']);
    // The init step reads the same settings as the server: same tunnel CIDR, listen port, Nodes.
    for (const name of ['NODELINK_LISTEN', 'NODELINK_NODE_AUTH', 'NODELINK_KUBECONFIG'])
      expect(envValue(init, name), name).to.equal(envValue(server, name));
    expect(init.envFrom).to.deep.equal(server.envFrom);
    expect(server.envFrom).to.deep.equal([{ configMapRef: { name: 'nodelink-server' } }]);
    for (const c of [server, init]) assertNetAdminOnly(c);
    const mount = assertKeyVolume(pod, server, 'nodelink-server-key');
    expect(envValue(server, 'NODELINK_KEY')).to.equal(`${mount.mountPath}/server.key`);
    expect(envValue(server, 'NODELINK_NODE_AUTH')).to.equal('kubernetes');
    expect(
      init.volumeMounts!.map((m) => m.name),
      'the init step reads no key',
    ).to.deep.equal(['nodelink-kubeconfig']);
    assertTunOnlyHostPath(pod, server);
    // Liveness and startup probes on --metrics; no readiness probe that could take the apiserver out of service.
    const metrics = envValue(server, 'NODELINK_METRICS')!;
    expect(metrics).to.match(/^127\.0\.0\.1:\d+$/);
    const port = Number(metrics.split(':')[1]);
    expect(server.livenessProbe?.httpGet).to.deep.equal({ host: '127.0.0.1', path: '/healthz', port });
    expect(server.startupProbe?.httpGet).to.deep.equal({ host: '127.0.0.1', path: '/readyz', port });
    expect(server.readinessProbe).to.equal(undefined);
    expect(server.resources?.limits?.['cpu'], 'no CPU limit on the single-threaded data path').to.equal(undefined);
    // Every node holds a session to each replica: the server count is the Deployment's replicas.
    const deployment = objects.find((o) => o.kind === 'Deployment') as unknown as { spec: { replicas: number } };
    expect(envValue(server, 'NODELINK_SERVER_COUNT')).to.equal(String(deployment.spec.replicas));
    expect(pod.terminationGracePeriodSeconds).to.be.within(5, 60);
  });

  it('apiserver sidecar: a LoadBalancer Service for the nodes, on the apiserver pods, at the sidecar’s port', function () {
    const objects = rendered.get('apiserver-sidecar')!;
    const deployment = objects.find((o) => o.kind === 'Deployment') as unknown as {
      spec: { template: { metadata: { labels: Record<string, string> } } };
    };
    const service = objects.find((o) => o.kind === 'Service') as unknown as {
      spec: {
        type: string;
        externalTrafficPolicy: string;
        selector: Record<string, string>;
        ports: Array<{ port: number; targetPort: string }>;
      };
    };
    expect(service.spec.type).to.equal('LoadBalancer');
    expect(service.spec.externalTrafficPolicy, "each node's own source address reaches the server").to.equal('Local');
    expect(deployment.spec.template.metadata.labels).to.include(service.spec.selector);
    const server = podSpec(objects.find((o) => o.kind === 'Deployment')!).containers[0]!;
    const [port] = service.spec.ports;
    const target = server.ports!.find((p) => p.name === port!.targetPort)!;
    expect(target.containerPort).to.equal(port!.port);
    expect(envValue(server, 'NODELINK_LISTEN')).to.equal(`0.0.0.0:${target.containerPort}`);
  });

  it("static pod: the kubeadm patch adds the server and its init step to kubeadm's kube-apiserver, keeping kubeadm's own", function () {
    const [kubeadm] = readYamlDocuments(KUBEADM_APISERVER) as K8sObject[];
    const [merged] = rendered.get('static-pod')!;
    const pod = podSpec(merged!);
    const original = podSpec(kubeadm!);
    expect(pod.hostNetwork, "kubeadm's apiserver is in the host's network namespace").to.equal(true);
    expect(pod.containers.map((c) => c.name)).to.deep.equal(['nodelink-server', 'kube-apiserver']);
    expect(pod.containers[1]).to.deep.equal(original.containers[0]);
    const server = pod.containers[0]!;
    const init = pod.initContainers!.find((c) => c.name === 'nodelink-routes')!;
    expect(init.args).to.deep.equal(['server', '--init-routes']);
    expect(envValue(init, 'NODELINK_CONFIG')).to.equal(envValue(server, 'NODELINK_CONFIG'));
    for (const c of [server, init]) assertNetAdminOnly(c);
    // No Secrets or ConfigMaps in a static pod: one root-only host directory, /dev/net/tun, and kubeadm's own.
    const hostPaths = pod.volumes!.filter((v) => v['hostPath']).map((v) => v['hostPath'].path as string);
    expect(hostPaths.sort()).to.deep.equal(
      ['/dev/net/tun', '/etc/kubernetes/nodelink', '/etc/kubernetes/pki', '/etc/ssl/certs'].sort(),
    );
    expect(pod.volumes!.some((v) => v['secret'] || v['configMap'])).to.equal(false);
    const config = server.volumeMounts!.find((m) => m.name === 'nodelink-config')!;
    expect(config.readOnly).to.equal(true);
    expect(envValue(server, 'NODELINK_CONFIG')!.startsWith(`${config.mountPath}/`)).to.equal(true);
    expect(server.readinessProbe).to.equal(undefined);
    expect(server.livenessProbe?.httpGet?.path).to.equal('/healthz');
  });

  it('the example apiservers carry the flags nodelink needs, and kubeadm-config.yaml sets them (the check bites)', function () {
    const command = (o: K8sObject): string[] => allContainers(o).find((c) => c.name === 'kube-apiserver')!.command!;
    const sidecar = command(rendered.get('apiserver-sidecar')!.find((o) => o.kind === 'Deployment')!);
    const kubeadm = command(rendered.get('static-pod')![0]!);
    const failing = (argv: string[]): string[] =>
      checkApiserverFlags(argv)
        .filter((check) => !check.ok)
        .map((check) => check.flag);
    expect(failing(sidecar)).to.deep.equal([]);
    expect(failing(kubeadm)).to.deep.equal([]);
    const [config] = readYamlDocuments(join(DEPLOY, 'static-pod', 'kubeadm-config.yaml')) as Array<{
      kind: string;
      apiServer: { extraArgs: Array<{ name: string; value: string }> };
    }>;
    expect(config!.kind).to.equal('ClusterConfiguration');
    const extra = config!.apiServer.extraArgs.map(({ name, value }) => `--${name}=${value}`);
    expect(failing(['kube-apiserver', ...extra])).to.deep.equal([]);
    expect(failing(['kube-apiserver', ...extra.slice(1)])).to.deep.equal(['kubelet-preferred-address-types']);
    expect(failing(sidecar.filter((arg) => !arg.startsWith('--enable-aggregator-routing')))).to.deep.equal([
      'enable-aggregator-routing',
    ]);
  });
});

describe('Dockerfile and .dockerignore', function () {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const stages = dockerfile.split(/^FROM /m).slice(1);

  it('passes dockerfile-utils with every optional check as an error', function () {
    const all = ValidationSeverity.ERROR;
    const problems = lintDockerfile(dockerfile, {
      deprecatedMaintainer: all,
      directiveCasing: all,
      emptyContinuationLine: all,
      instructionCasing: all,
      instructionCmdMultiple: all,
      instructionEntrypointMultiple: all,
      instructionHealthcheckMultiple: all,
      instructionJSONInSingleQuotes: all,
      instructionWorkdirRelative: all,
    });
    expect(problems.map((p) => `line ${p.range.start.line + 1}: ${p.message}`)).to.deep.equal([]);
    expect(lintDockerfile('FROM scratch\nCOPYY a b\n'), 'the linter bites').to.have.length.greaterThan(0);
  });

  it('is multi-stage on a Node LTS slim base: toolchain only in the build stage, iproute2 and nftables in the runtime', function () {
    expect(dockerfile).to.match(/^ARG NODE_IMAGE=node:(22|24)-[a-z]+-slim$/m);
    expect(stages).to.have.length(2);
    expect(stages[0]).to.match(/^\$\{NODE_IMAGE\} AS build/);
    expect(stages[0]).to.match(/python3 make g\+\+/);
    expect(stages[0]).to.match(/npm ci/);
    expect(stages[1]).to.match(/^\$\{NODE_IMAGE\} AS runtime/);
    expect(stages[1]).to.match(/apt-get install -y --no-install-recommends iproute2 nftables/);
    expect(stages[1]).to.not.match(/g\+\+|make|python3/);
    expect(stages[1]).to.match(/COPY --from=build \/src\/native\/build\/Release\/tunio\.node/);
    expect(stages[1]).to.match(/^ENTRYPOINT \["nodelink"\]$/m);
  });

  it('.dockerignore keeps build outputs, dependencies and git out of the context', function () {
    const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim());
    expect(ignored).to.include.members(['.git', 'node_modules', 'dist', 'native/build']);
    // Whatever the Dockerfile copies from the context must not be ignored.
    for (const match of dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
      for (const source of match[1]!.split(/\s+/)) expect(ignored, source).to.not.include(source.replace(/\/$/, ''));
    }
  });
});

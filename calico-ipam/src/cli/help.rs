//! The help texts: one per command, printed by `COMMAND --help` (or `help COMMAND`).

pub const GLOBAL: &str = "\
usage: calico-ipam [GLOBAL FLAGS] COMMAND [ARGS]

The operator CLI of calico-ipam (run without CNI_COMMAND). It takes calicoctl's spellings:

  ipam show [--ip=IP | --show-blocks | --show-borrowed | --show-configuration] [-o json|yaml]
  ipam check [-o REPORT] [--show-problem-ips] [--show-all-ips]
  ipam release --ip=IP | --from-report=REPORT... [--force]
  ipam configure [--strictaffinity=true|false] [--max-blocks-per-host=N]
                 [--autoallocateblocks=true|false] [--kubevirt-ip-persistence=Enabled|Disabled]
  ipam split NUMBER (--cidr=CIDR | --name=POOL)
  get ippool [NAME] [-o wide|yaml|json]
  apply -f FILE
  patch ippool NAME -p PATCH
  delete ippool NAME
  version

`show`, `check`, `release`, `configure` and `split` also work without `ipam`, and
`pool apply|list|delete` is the older spelling of apply, get and delete.
Run `calico-ipam COMMAND --help` for a command's flags.

global flags (else the environment):
  --datastore-type local|kubernetes|etcdv3   DATASTORE_TYPE   (default local)
  --datastore-path DIR                DATASTORE_PATH   (default /var/lib/calico/ipam)
  --kubeconfig FILE                   KUBECONFIG
  --calico-api-group GROUP            CALICO_API_GROUP (kubernetes: projectcalico.org/v3 or
                                      crd.projectcalico.org/v1; default: ask the API server)
  --etcd-endpoints URL,...            ETCD_ENDPOINTS   (etcdv3)
  --etcd-ca-cert-file FILE            ETCD_CA_CERT_FILE
  --etcd-cert-file FILE               ETCD_CERT_FILE
  --etcd-key-file FILE                ETCD_KEY_FILE
  -h, --help                          this help; after a command, that command's help
  -v, --version                       the version, the git commit and the build identity

exit codes:
  0  success (`ipam check`: no problem found)
  1  the command failed: bad input file, refused change, datastore error
  2  usage error: unknown command or flag, missing argument
  3  `ipam check` found problems (listed on stdout, and in the report with -o)
";

pub const IPAM: &str = "\
usage: calico-ipam ipam COMMAND [ARGS]

  check       check allocations against blocks, handles, affinities, pods and nodes
  release     release an address, or the leaked addresses of a report
  show        pool and block usage, one address's holder, borrowed addresses, configuration
  split       split an IPPool into 2^n smaller pools
  configure   change the IPAM configuration

Run `calico-ipam ipam COMMAND --help` for a command's flags.
";

pub const SHOW: &str = "\
usage: calico-ipam ipam show [--ip=IP] [--show-blocks] [--show-borrowed] [--show-configuration]
                             [-o table|json|yaml]

  --ip=IP                who holds this address: handle, pod, namespace, node, block
  --show-blocks          the blocks of every pool, under their pool
  --show-borrowed        addresses a node took from a block affine to another node
  --show-configuration   the IPAM configuration
  -o, --output FORMAT    table (default, as calicoctl prints it), json or yaml

Without flags: each pool's total, in-use and free addresses. Totals of five digits or more
print as Go's %.5g does (1.2089e+24 for an IPv6 /48); percentages are rounded.
";

pub const CHECK: &str = "\
usage: calico-ipam ipam check [-o REPORT] [--show-problem-ips] [--show-all-ips]

Checks that the IPAM data agrees with itself and with what uses it:
  - every block, handle and affinity is well formed and they reference each other;
  - every allocated address is used by a live pod (or a node's tunnel address): an address
    whose pod or node is gone is leaked;
  - every pod address in an active pool is allocated;
  - every handle holds addresses; every block affine to a node belongs to an existing node.
With the kubernetes datastore, pods, nodes and services are listed from the API server (the
kubeconfig must allow that, as for calicoctl; the CNI plugin's account does not). The local
datastore has no pod list: an address counts as used while the network namespace its ADD
was given still exists; addresses recorded without one cannot be judged and are listed as
such (they are not counted as problems).

  -o, --output REPORT    write calicoctl's JSON report (input of `ipam release --from-report`)
  --show-problem-ips     print every leaked or unallocated address
  --show-all-ips         print every address checked

Exit code 0 when nothing is wrong, 3 when problems were found, 1 when the check could not run.
";

pub const RELEASE: &str = "\
usage: calico-ipam ipam release --ip=IP
       calico-ipam ipam release --from-report=REPORT... [--force]

  --ip=IP                release this address, whatever holds it
  --from-report=REPORT   release the addresses and handles a `check -o REPORT` found leaked.
                         With several reports, only what is leaked in all of them. An address
                         is released only if it still has the handle and sequence number the
                         report recorded (so one reallocated since is left alone).
  --force                release although the datastore is not locked (ClusterInformation
                         datastoreReady is not false) or the report is of another version

Only use it for addresses of workloads that were not removed cleanly: releasing does not take
an address away from a pod still using it.
";

pub const CONFIGURE: &str = "\
usage: calico-ipam ipam configure [--strictaffinity=true|false] [--max-blocks-per-host=N]
                                  [--autoallocateblocks=true|false]
                                  [--kubevirt-ip-persistence=Enabled|Disabled]

  --strictaffinity         true: never borrow addresses from another node's block
  --max-blocks-per-host    blocks per node and family (0: Calico's default of 20); needs
                           strict affinity, as Calico requires
  --autoallocateblocks     false: never claim new blocks (needs strict affinity)
  --kubevirt-ip-persistence
                           whether KubeVirt VMs keep their addresses

At least one flag is required.
";

pub const SPLIT: &str = "\
usage: calico-ipam ipam split NUMBER (--cidr=CIDR | --name=POOL)

Splits the IPPool into NUMBER (a power of 2) equal pools named split-POOL-0, split-POOL-1, ...,
with the same settings, then deletes the original. Existing blocks and allocations stay as they
are. The old pool is disabled before the new ones are created, then deleted. With the
kubernetes datastore the datastore must be locked first (ClusterInformation datastoreReady
false, as `calicoctl datastore migrate lock` does). The local datastore needs no lock.
";

pub const GET: &str = "\
usage: calico-ipam get ippool [NAME] [-o wide|yaml|json]

Lists the IPPools (or the one named) as calicoctl does: NAME, CIDR, SELECTOR; `-o wide` adds
NAT, IPIPMODE, VXLANMODE, DISABLED, DISABLEBGPEXPORT and ASSIGNMENTMODE; yaml and json print
projectcalico.org/v3 documents (an IPPoolList without NAME). `ippools`, `ipp`, `pool` work too.
";

pub const APPLY: &str = "\
usage: calico-ipam apply -f FILE

Creates or updates the resources in FILE (`-` for stdin), YAML or JSON, one or many documents:
  IPPool                (projectcalico.org/v3 or crd.projectcalico.org/v1)
  IPAMConfiguration     (projectcalico.org/v3; IPAMConfig in crd.projectcalico.org/v1)
Unknown fields are rejected with the nearest valid name. Every document is validated, against
the others and the pools already stored, before anything is written.
";

pub const PATCH: &str = "\
usage: calico-ipam patch ippool NAME -p PATCH

Applies a JSON merge patch to an IPPool, e.g. to disable it before deleting it:
  calico-ipam patch ippool my-pool -p '{\"spec\":{\"disabled\":true}}'
";

pub const DELETE: &str = "\
usage: calico-ipam delete ippool NAME

Deletes an IPPool. A pool that still has addresses in use must be disabled first (as Calico
advises), so no new address comes from it while its pods are moved:
  calico-ipam patch ippool NAME -p '{\"spec\":{\"disabled\":true}}'
The addresses stay allocated until their pods are deleted or `ipam release` frees them.
";

pub const POOL: &str = "\
usage: calico-ipam pool apply -f FILE          (= apply -f FILE)
       calico-ipam pool list [-o wide|yaml|json]   (= get ippool)
       calico-ipam pool delete NAME            (= delete ippool NAME)

The older spelling of apply, get ippool and delete ippool.
";

pub const VERSION: &str = "\
usage: calico-ipam version | --version | -v

Prints the version and the git commit the binary was built from, and on a second line its
build identity (calico-cni runs IPAM in-process only for a calico-ipam with its own).
";

/// The help of the command named by `words` (the command line's non-flag words).
pub fn for_words(words: &[&str]) -> &'static str {
    let words: Vec<&str> = words.iter().copied().skip_while(|w| *w == "help").collect();
    let (first, second) = (words.first().copied(), words.get(1).copied());
    match (first, second) {
        (Some("ipam"), Some(sub)) => for_words(&[sub]),
        (Some("ipam"), None) => IPAM,
        (Some("show"), _) => SHOW,
        (Some("check"), _) => CHECK,
        (Some("release"), _) => RELEASE,
        (Some("configure"), _) => CONFIGURE,
        (Some("split"), _) => SPLIT,
        (Some("get"), _) => GET,
        (Some("apply"), _) => APPLY,
        (Some("patch"), _) => PATCH,
        (Some("delete"), _) => DELETE,
        (Some("pool"), Some("apply")) => APPLY,
        (Some("pool"), Some("list" | "ls" | "get")) => GET,
        (Some("pool"), Some("delete" | "rm")) => DELETE,
        (Some("pool"), _) => POOL,
        (Some("version"), _) => VERSION,
        _ => GLOBAL,
    }
}

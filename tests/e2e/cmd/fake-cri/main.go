// Command fake-cri is the container runtime of the e2e kubelet (tests/e2e/kubelet.py):
// the fake CRI runtime and image service of k8s.io/cri-client/pkg/fake, served on a
// unix socket, with a recorder in front of CreateContainer. Nothing runs: sandboxes
// are Ready and containers Running once started, and they never exit (so init
// containers never finish). What the kubelet asked for is kept, one JSON object a
// line, in the file named by -record: the environment, device nodes, mounts, CDI
// devices and annotations a device plugin's Allocate answer put into each container.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
	"k8s.io/cri-client/pkg/util"
)

// record is one CreateContainer request as written to the -record file.
type record struct {
	Time         string            `json:"time"` // RFC 3339, nanoseconds, UTC
	ContainerID  string            `json:"container_id"`
	PodSandboxID string            `json:"pod_sandbox_id"`
	PodName      string            `json:"pod_name"`
	PodNamespace string            `json:"pod_namespace"`
	PodUID       string            `json:"pod_uid"`
	Container    string            `json:"container"`
	Attempt      uint32            `json:"attempt"`
	Image        string            `json:"image"`
	Envs         []keyValue        `json:"envs"`
	Devices      []device          `json:"devices"`
	Mounts       []mount           `json:"mounts"`
	CDIDevices   []string          `json:"cdi_devices"`
	Annotations  map[string]string `json:"annotations"`
}

type keyValue struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type device struct {
	ContainerPath string `json:"container_path"`
	HostPath      string `json:"host_path"`
	Permissions   string `json:"permissions"`
}

type mount struct {
	ContainerPath string `json:"container_path"`
	HostPath      string `json:"host_path"`
	Readonly      bool   `json:"readonly"`
}

// recorder is the fake runtime with CreateContainer and ContainerStatus wrapped; every
// other CRI call is the embedded fake's own.
type recorder struct {
	*fake.RemoteRuntime
	mu       sync.Mutex
	out      *os.File
	logPaths map[string]string // container ID -> its log file, as a real runtime reports it
}

// ContainerStatus reports each container's log path (the sandbox's log directory joined
// with the container's), as real runtimes do. The stock fake reports none, and the
// kubelet, cleaning up a removed container's logs, then deletes whatever matches "*"
// in its working directory.
func (r *recorder) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	resp, err := r.RemoteRuntime.ContainerStatus(ctx, req)
	if err != nil || resp.GetStatus() == nil {
		return resp, err
	}
	r.mu.Lock()
	resp.Status.LogPath = r.logPaths[req.ContainerId]
	r.mu.Unlock()
	return resp, nil
}

func (r *recorder) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	resp, err := r.RemoteRuntime.CreateContainer(ctx, req)
	if err != nil {
		return nil, err
	}
	config, pod := req.GetConfig(), req.GetSandboxConfig().GetMetadata()
	r.mu.Lock()
	r.logPaths[resp.ContainerId] = filepath.Join(req.GetSandboxConfig().GetLogDirectory(), config.GetLogPath())
	r.mu.Unlock()
	rec := record{
		Time:         time.Now().UTC().Format(time.RFC3339Nano),
		ContainerID:  resp.ContainerId,
		PodSandboxID: req.PodSandboxId,
		PodName:      pod.GetName(),
		PodNamespace: pod.GetNamespace(),
		PodUID:       pod.GetUid(),
		Container:    config.GetMetadata().GetName(),
		Attempt:      config.GetMetadata().GetAttempt(),
		Image:        config.GetImage().GetImage(),
		Envs:         []keyValue{},
		Devices:      []device{},
		Mounts:       []mount{},
		CDIDevices:   []string{},
		Annotations:  config.GetAnnotations(),
	}
	for _, e := range config.GetEnvs() {
		// CRI carries values as bytes; JSON shows them as text (invalid UTF-8 as U+FFFD).
		rec.Envs = append(rec.Envs, keyValue{e.Key, string(e.Value)})
	}
	for _, d := range config.GetDevices() {
		rec.Devices = append(rec.Devices, device{d.ContainerPath, d.HostPath, d.Permissions})
	}
	for _, m := range config.GetMounts() {
		rec.Mounts = append(rec.Mounts, mount{m.ContainerPath, m.HostPath, m.Readonly})
	}
	for _, c := range config.GetCDIDevices() {
		rec.CDIDevices = append(rec.CDIDevices, c.Name)
	}
	line, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	// One write of one whole line to an O_APPEND file: a reader sees whole lines.
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.out.Write(append(line, '\n')); err != nil {
		return nil, err
	}
	return resp, nil
}

func main() {
	endpoint := flag.String("endpoint", "", "unix socket to serve CRI on, e.g. unix:///tmp/cri.sock")
	recordPath := flag.String("record", "", "file to append one JSON line to per CreateContainer")
	fsDir := flag.String("fs-dir", "", "directory reported as the image and container filesystem")
	flag.Parse()
	if *endpoint == "" || *recordPath == "" || *fsDir == "" {
		log.Fatal("fake-cri: -endpoint, -record and -fs-dir are required")
	}
	out, err := os.OpenFile(*recordPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		log.Fatal(err)
	}

	runtime := fake.NewFakeRemoteRuntime()
	// What fake.RemoteRuntime.Start sets, which we do not call (it would serve the
	// unwrapped runtime): runtime and network Ready, so the node gets Ready without CNI.
	runtime.RuntimeService.FakeStatus = &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: true},
	}}
	// The kubelet asks which cgroup driver to use; the harness configures cgroupfs too.
	runtime.RuntimeService.FakeLinuxConfiguration = &runtimeapi.LinuxRuntimeConfiguration{
		CgroupDriver: runtimeapi.CgroupDriver_CGROUPFS,
	}
	// Pulled images are reported with this size, not the stock fake's 0, which no runtime
	// reports (the kubelet lists image sizes in the Node's status and sums them in stats).
	runtime.ImageService.SetFakeImageSize(64 << 20)
	// The stock fake reports no image filesystem, and the kubelet's eviction manager
	// then fails every 10 s ("imagefs device is not found"); the kubelet looks up the
	// device and capacity of this mount point itself.
	usage := []*runtimeapi.FilesystemUsage{{
		Timestamp:  time.Now().UnixNano(),
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: *fsDir},
		UsedBytes:  &runtimeapi.UInt64Value{},
		InodesUsed: &runtimeapi.UInt64Value{},
	}}
	runtime.ImageService.SetFakeFilesystemUsage(usage)
	runtime.ImageService.SetFakeContainerFilesystemUsage(usage)

	// The fakes log every call in their Called slices (for unit tests); trim them so a
	// long run does not grow without bound.
	go func() {
		for range time.Tick(10 * time.Second) {
			rs, is := runtime.RuntimeService, runtime.ImageService
			rs.Lock()
			rs.Called = rs.Called[:0]
			rs.Unlock()
			is.Lock()
			is.Called = is.Called[:0]
			is.Unlock()
		}
	}()

	listener, err := util.CreateListener(*endpoint)
	if err != nil {
		log.Fatalf("fake-cri: listen on %s: %v", *endpoint, err)
	}
	server := grpc.NewServer()
	rec := &recorder{RemoteRuntime: runtime, out: out, logPaths: map[string]string{}}
	runtimeapi.RegisterRuntimeServiceServer(server, rec)
	runtimeapi.RegisterImageServiceServer(server, rec)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		server.Stop()
	}()
	log.Printf("fake-cri: serving CRI on %s, recording CreateContainer to %s", *endpoint, *recordPath)
	if err := server.Serve(listener); err != nil {
		log.Fatal(err)
	}
}

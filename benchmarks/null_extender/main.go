// null-extender answers kube-scheduler's filter and prioritize as cheaply as an extender can:
// every candidate passes and scores 10. scheduler_throughput.py runs a profile against it to
// measure what calling any HTTP extender costs kube-scheduler, apart from gpu-extender's own work.
//
//	null-extender 127.0.0.1:PORT
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
)

// candidates is the part of ExtenderArgs this server reads (nodeCacheCapable: names only).
type candidates struct {
	NodeNames []string `json:"NodeNames"`
}

type hostPriority struct {
	Host  string `json:"Host"`
	Score int64  `json:"Score"`
}

type filterResult struct {
	NodeNames   []string          `json:"NodeNames"`
	FailedNodes map[string]string `json:"FailedNodes"`
}

func read(w http.ResponseWriter, r *http.Request) ([]string, bool) {
	var args candidates
	if err := json.NewDecoder(r.Body).Decode(&args); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, false
	}
	w.Header().Set("Content-Type", "application/json")
	return args.NodeNames, true
}

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: null-extender HOST:PORT")
	}
	http.HandleFunc("/filter", func(w http.ResponseWriter, r *http.Request) {
		if names, ok := read(w, r); ok {
			json.NewEncoder(w).Encode(filterResult{NodeNames: names, FailedNodes: map[string]string{}})
		}
	})
	http.HandleFunc("/prioritize", func(w http.ResponseWriter, r *http.Request) {
		if names, ok := read(w, r); ok {
			scores := make([]hostPriority, len(names))
			for i, name := range names {
				scores[i] = hostPriority{Host: name, Score: 10}
			}
			json.NewEncoder(w).Encode(scores)
		}
	})
	log.Fatal(http.ListenAndServe(os.Args[1], nil))
}

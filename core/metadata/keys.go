package metadata

import "strings"

// KeyPrefix returns the prefix of every key Mooncake stores: "mooncake/", or
// "mooncake/<clusterID>/" when MC_METADATA_CLUSTER_ID is set (a '/' is
// appended when missing).
func KeyPrefix(clusterID string) string {
	if clusterID == "" {
		return "mooncake/"
	}
	if !strings.HasSuffix(clusterID, "/") {
		clusterID += "/"
	}
	return "mooncake/" + clusterID
}

// SegmentKey returns the key of a segment's descriptor: prefix+"ram/"+name,
// or prefix+name when name already contains a '/' (getFullMetadataKey).
func SegmentKey(prefix, name string) string {
	if strings.Contains(name, "/") {
		return prefix + name
	}
	return prefix + "ram/" + name
}

// RPCMetaKey returns the key of a server's rpc_meta locator.
func RPCMetaKey(prefix, name string) string {
	return prefix + "rpc_meta/" + name
}

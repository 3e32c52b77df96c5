// Posts one request-logger CloudEvent to a URL exactly as seldon-core v1.17.1's executor does
// (executor/logger/worker.go sendCloudEvent: cloudevents sdk-go v1.2.0, HTTP binary encoding).
package main

import (
	"context"
	"fmt"
	"os"

	cloudevents "github.com/cloudevents/sdk-go"
)

func main() {
	t, err := cloudevents.NewHTTPTransport(cloudevents.WithTarget(os.Args[1]), cloudevents.WithEncoding(cloudevents.HTTPBinaryV1))
	if err != nil {
		panic(err)
	}
	c, err := cloudevents.NewClient(t, cloudevents.WithTimeNow())
	if err != nil {
		panic(err)
	}
	event := cloudevents.NewEvent(cloudevents.VersionV1)
	event.SetID(os.Args[3])
	event.SetType(os.Args[2])
	event.SetExtension("modelid", "iris")
	event.SetExtension("requestid", os.Args[3])
	event.SetSource("http://executor:8000/")
	event.SetDataContentType("application/json")
	if err := event.SetData([]byte(os.Args[4])); err != nil {
		panic(err)
	}
	if _, _, err := c.Send(context.Background(), event); err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	fmt.Println("sent")
}

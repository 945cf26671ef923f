"""A model-free node for the interface tests: answers Ground from the request alone and
publishes a GroundedObjectArray on `groundings`. It proves the generated interfaces work
between two processes; the real node is tested in test_node_*.py."""
import rclpy
from rclpy.node import Node

from objembed_msgs.msg import GroundedObject, GroundedObjectArray
from objembed_msgs.srv import Ground


class InterfaceEchoNode(Node):
    def __init__(self) -> None:
        super().__init__("interface_echo")
        self.pub = self.create_publisher(GroundedObjectArray, "groundings", 10)
        self.create_service(Ground, "ground", self.on_ground)
        self.create_timer(0.1, self.publish)

    def publish(self) -> None:
        msg = GroundedObjectArray(query="echo", image_width=640, image_height=480)
        msg.header.frame_id = "camera_color_optical_frame"
        msg.objects.append(GroundedObject(x1=1.0, y1=2.0, x2=3.5, y2=4.5, score=0.5, label="echo"))
        self.pub.publish(msg)

    def on_ground(self, request: Ground.Request, response: Ground.Response) -> Ground.Response:
        if not request.queries or any(not q.strip() for q in request.queries):
            response.success = False
            response.message = "empty query"
            return response
        boxes = list(request.boxes)
        for q in request.queries:
            arr = GroundedObjectArray(query=q)
            for i in range(len(boxes) // 4):
                x1, y1, x2, y2 = boxes[4 * i: 4 * i + 4]
                arr.objects.append(GroundedObject(x1=x1, y1=y1, x2=x2, y2=y2, label=q,
                                                  proposal_index=-1))
            response.results.append(arr)
        response.success = True
        response.message = f"{len(request.queries)} queries"
        return response


def main() -> None:
    rclpy.init()
    node = InterfaceEchoNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
